"""Development and operations tooling: never shipped to Lambda or Fargate, never imported by `conveyor`."""
