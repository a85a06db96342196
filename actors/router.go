package actors

import (
	"sync"
	"sync/atomic"

	"github.com/asynkron/protoactor-go/actor"
)

// router sends each delivery to one of the tenant's workers, round robin.
//
// protoactor-go's group router is not used because it changes its routee set
// in place while other goroutines route through it, and it divides by zero
// when the set is empty. Here the routee slice is replaced, never changed,
// under a lock that route also takes, so once remove returns no further
// message reaches the removed worker: a worker being drained cannot receive
// a delivery after its drain request.
type router struct {
	root *actor.RootContext

	mu      sync.RWMutex
	routees []*actor.PID
	next    atomic.Uint64
}

func newRouter(root *actor.RootContext) *router {
	return &router{root: root}
}

// route sends msg to the next worker and reports whether there was one.
func (r *router) route(msg any) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if len(r.routees) == 0 {
		return false
	}
	i := r.next.Add(1) % uint64(len(r.routees))
	r.root.Send(r.routees[i], msg)
	return true
}

func (r *router) add(pid *actor.PID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	routees := make([]*actor.PID, 0, len(r.routees)+1)
	routees = append(routees, r.routees...)
	r.routees = append(routees, pid)
}

func (r *router) remove(pid *actor.PID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	routees := make([]*actor.PID, 0, len(r.routees))
	for _, p := range r.routees {
		if !p.Equal(pid) {
			routees = append(routees, p)
		}
	}
	r.routees = routees
}

func (r *router) len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.routees)
}
