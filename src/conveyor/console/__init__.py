"""The Fargate service: the admin console's HTTP API and background reconciliation, under gunicorn.

`create_app()` builds the Flask app; `wsgi:app` is what gunicorn serves, configured by
`gunicorn_config.py` (`gunicorn -c python:conveyor.console.gunicorn_config conveyor.console.wsgi:app`).
"""
