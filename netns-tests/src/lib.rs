//! Tests across real hosts in Linux network namespaces. The data-plane issue brings the topology
//! harness; nothing crosses namespaces yet.
