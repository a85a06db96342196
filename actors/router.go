package actors

import (
	"sync"
	"sync/atomic"

	"github.com/asynkron/protoactor-go/actor"
)

// router sends each delivery to one of the tenant's workers.
//
// It keeps sending to the same worker until that worker holds a full batch
// of unflushed deliveries, and only then moves to the least loaded one.
// Spreading deliveries round robin would split what one worker could store
// in one transaction into several smaller ones. On a busy machine the extra
// commits cost more than the parallelism gains. Under light load one worker
// takes everything and flushes as soon as its mailbox drains.
//
// protoactor-go's group router is not used because it changes its routee
// set in place while other goroutines route through it, and it divides by
// zero when the set is empty. Here the routee slice is replaced, never
// changed, under a lock that route also takes, so once remove returns no
// further message reaches the removed worker: a worker being drained cannot
// receive a delivery after its drain request.
type router struct {
	root *actor.RootContext
	fill int64 // deliveries a worker may hold before the router moves on

	mu      sync.RWMutex
	routees []routee
	current atomic.Int64 // index into routees of the worker being filled
}

// routee is one worker and its count of deliveries routed to it that it has
// not flushed yet. The worker decrements the count.
type routee struct {
	pid     *actor.PID
	pending *atomic.Int64
}

func newRouter(root *actor.RootContext, fill int) *router {
	return &router{root: root, fill: int64(max(fill, 1))}
}

// route sends msg to a worker and reports whether there was one.
func (r *router) route(msg any) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if len(r.routees) == 0 {
		return false
	}
	i := int(r.current.Load()) % len(r.routees)
	if r.routees[i].pending.Load() >= r.fill {
		i = r.leastLoaded()
		r.current.Store(int64(i))
	}
	r.routees[i].pending.Add(1)
	r.root.Send(r.routees[i].pid, msg)
	return true
}

// leastLoaded returns the index of the routee with the fewest pending
// deliveries. The caller holds the read lock.
func (r *router) leastLoaded() int {
	best, fewest := 0, r.routees[0].pending.Load()
	for i := 1; i < len(r.routees); i++ {
		if n := r.routees[i].pending.Load(); n < fewest {
			best, fewest = i, n
		}
	}
	return best
}

func (r *router) add(pid *actor.PID, pending *atomic.Int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	routees := make([]routee, 0, len(r.routees)+1)
	routees = append(routees, r.routees...)
	r.routees = append(routees, routee{pid: pid, pending: pending})
}

func (r *router) remove(pid *actor.PID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	routees := make([]routee, 0, len(r.routees))
	for _, rt := range r.routees {
		if !rt.pid.Equal(pid) {
			routees = append(routees, rt)
		}
	}
	r.routees = routees
}
