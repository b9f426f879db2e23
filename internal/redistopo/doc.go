// Package redistopo starts real redis-server topologies for tests: a single
// server (StartSingle), a Sentinel group of one master, two replicas and
// three sentinels (StartSentinel), and a Redis Cluster of three masters with
// a replica each (StartCluster).
//
// Every server listens on a free 127.0.0.1 port, keeps no data on disk
// (--save "" --appendonly no) and runs in the foreground as a child of the
// test binary; t.Cleanup kills it and removes its directory, and a test
// binary that dies takes its servers with it. Faults are injected with the
// Server methods (Kill, Stop, Restart, Pause), the topologies' KillMaster and
// a Cluster's KillMasterOf (the master of a key's slot). WaitFailover and
// WaitPromotion poll until the topology has recovered; WaitFirstNamed (a
// majority of the sentinels agreeing) and WaitFirstPromoted return the
// moment it showed the new master, as a reference point for "within d of the
// promotion".
//
// It is a test helper, imported only by tests. redis-server (7.0 or later)
// must be on PATH: without it the test fails, it is not skipped.
package redistopo
