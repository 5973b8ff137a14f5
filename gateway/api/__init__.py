"""The gRPC face: servicer, conversion, auth, and the error-to-status mapping."""
