"""Generated code from protos/jobworker/v1/jobworker.proto; do not edit, regenerate with `just protos`."""
