"""Development and operations tooling: the `conveyor` CLI, the local stack, the local Data API
endpoint, the chaos harness and the load generator.

None of it ships to Lambda or Fargate: `conveyor` (the runtime) never imports `conveyor_tools`.
"""
