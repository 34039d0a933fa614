"""Operations' view of the gateway: Prometheus metrics, OpenTelemetry traces, structured logs."""
