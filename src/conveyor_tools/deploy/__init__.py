"""`conveyor deploy` and `conveyor destroy`: CloudFormation stacks, Lambda packages, the image, the migrations."""
