package main

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// warmupLimit bounds the warm-up. A fresh Redis refuses proofs issued
// before its start plus dpop_future_skew (5 s) as replay_store_recovering,
// as after any loss; 30 s is that and a wide margin.
const warmupLimit = 30 * time.Second

// warmUp sends valid requests (not recorded) to every replica and route
// every 100 ms until each has answered 200, so that the load's first
// "steady" phase starts steady: the store's start-up floor, the first key
// set fetch and the first membership fills happen here. It returns how long
// that took.
func (d *driver) warmUp(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	ok := map[[2]any]bool{}
	for n := 0; time.Since(start) < warmupLimit; n++ {
		for i, rep := range d.replicas {
			for _, route := range []string{routeDeny, routeLocal} {
				if ok[[2]any{i, route}] {
					continue
				}
				path := fmt.Sprintf("/kj/warmup/%d-%d-%s", n, i, route)
				token, proof, err := d.credentials(kindValid, route, path)
				if err != nil {
					return 0, err
				}
				if st, _ := d.send(ctx, "http://"+rep.sites[route]+path, token, proof); st == http.StatusOK {
					ok[[2]any{i, route}] = true
				}
			}
		}
		if len(ok) == 2*len(d.replicas) {
			return time.Since(start), nil
		}
		if !sleepUntil(ctx, time.Now().Add(100*time.Millisecond)) {
			return 0, ctx.Err()
		}
	}
	return 0, fmt.Errorf("no 200 from every replica and route within %s", warmupLimit)
}
