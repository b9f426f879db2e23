// Package dist holds no code: its tests check the deployment files beside it
// (systemd, Kubernetes, Prometheus alert rules, the Grafana dashboard)
// against the gateway they deploy.
package dist
