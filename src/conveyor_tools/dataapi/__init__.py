"""A local RDS Data API endpoint: `server.LocalDataApi` serves the Data API's REST-JSON protocol on
127.0.0.1 in front of a PostgreSQL database, so the Lambda path runs on a laptop (docs/dataapi.md)."""
