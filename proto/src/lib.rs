//! Protocol definitions shared by yr components (gRPC services land here with the control plane).
