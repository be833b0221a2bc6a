//! Tests of handler installation, forwarding and re-arming, run in child processes.
