"""HAProxy as the gateway's data plane, programmed by Greenroom (`--engine haproxy`)."""
