//! The end-to-end harness: processes, ports, backends, data planes.
