"""Local stand-ins for AWS services, for development without an AWS account."""
