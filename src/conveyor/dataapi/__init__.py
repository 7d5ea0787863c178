"""The RDS Data API path to Aurora: a client for Lambda and a local endpoint that speaks the protocol.

- `conveyor.dataapi.client.DataApiDatabase` runs Conveyor's statements through the Data API,
  one ExecuteStatement per statement, with retries for a resuming or throttled cluster.
- `conveyor_tools.dataapi.server.LocalDataApi` (development tooling, not shipped) serves the Data API's REST-JSON protocol on
  127.0.0.1 in front of a PostgreSQL database, so the same path runs on a laptop.

See docs/dataapi.md for what the local endpoint emulates and what it does not.
"""
