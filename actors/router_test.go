package actors

import (
	"log/slog"
	"sync/atomic"
	"testing"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/stretchr/testify/require"
)

func TestRouterFillsOneWorkerFirst(t *testing.T) {
	t.Parallel()
	system := quietSystem()
	t.Cleanup(system.Shutdown)
	noop := actor.PropsFromFunc(func(actor.Context) {})

	r := newRouter(system.Root, 4)
	require.False(t, r.route("nobody"), "no worker yet")

	counts := make([]*atomic.Int64, 3)
	for i := range counts {
		counts[i] = new(atomic.Int64)
		r.add(system.Root.Spawn(noop), counts[i])
	}
	for i := 0; i < 4; i++ {
		require.True(t, r.route(i))
	}
	require.Equal(t, []int64{4, 0, 0}, loads(counts), "the first worker is filled up to a batch")

	require.True(t, r.route("next"))
	require.Equal(t, []int64{4, 1, 0}, loads(counts), "a full worker hands over to the least loaded")

	counts[0].Store(0) // the first worker flushed
	for i := 0; i < 3; i++ {
		require.True(t, r.route(i))
	}
	require.Equal(t, []int64{0, 4, 0}, loads(counts), "the router stays on the worker it fills")
	require.True(t, r.route("again"))
	require.Equal(t, []int64{1, 4, 0}, loads(counts))
}

func TestRouterRemoveStopsRouting(t *testing.T) {
	t.Parallel()
	system := quietSystem()
	t.Cleanup(system.Shutdown)
	noop := actor.PropsFromFunc(func(actor.Context) {})

	r := newRouter(system.Root, 1)
	a, b := new(atomic.Int64), new(atomic.Int64)
	pidA := system.Root.Spawn(noop)
	r.add(pidA, a)
	r.add(system.Root.Spawn(noop), b)
	r.remove(pidA)
	for i := 0; i < 5; i++ {
		require.True(t, r.route(i))
	}
	require.Zero(t, a.Load(), "a removed worker gets nothing")
	require.Equal(t, int64(5), b.Load())
}

func loads(counts []*atomic.Int64) []int64 {
	out := make([]int64, len(counts))
	for i, c := range counts {
		out[i] = c.Load()
	}
	return out
}

// quietSystem returns an actor system that logs nothing; the default one
// prints to stdout.
func quietSystem() *actor.ActorSystem {
	return actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.DiscardHandler)
	}))
}
