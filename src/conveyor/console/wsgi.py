"""What gunicorn serves: `conveyor.console.wsgi:app`."""
from conveyor.console.app import create_app

app = create_app()
