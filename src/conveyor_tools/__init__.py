"""Development and operations tooling for Conveyor; the runtime package `conveyor` never imports it."""
