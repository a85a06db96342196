package actors

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/go-messaging-system/messaging/transport"
)

// Requests a tenant actor handles.
type (
	// Resize sets the number of workers; the response is *Status.
	Resize struct{ WorkerCount int }
	// GetStatus requests the tenant's *Status.
	GetStatus struct{}
	// Stop cancels the consumer, lets every worker flush and ack, and closes
	// the channel; the response is *Stopped. Afterwards the actor can be
	// stopped without losing a delivery.
	Stop struct{}
)

// Status is a tenant actor's view of itself.
type Status struct {
	WorkerCount     int // requested
	WorkersRunning  int // alive and not waiting for a restart
	ConsumerRunning bool
}

// Stopped is the response to Stop.
type Stopped struct{}

// Messages a tenant actor sends itself.
type (
	consumerEnded struct {
		consumer *transport.Consumer
		err      error
	}
	retryConsumer struct{ gen int }
	workerUp      struct{ pid *actor.PID }
	workerDown    struct{ pid *actor.PID }
)

// TenantState is the part of a tenant actor's state that other goroutines
// read without a round trip through its mailbox: the readiness check and
// the API's tenant views.
type TenantState struct {
	workersRunning  atomic.Int32
	consumerRunning atomic.Bool
}

// WorkersRunning returns how many workers are alive and not waiting for a
// restart.
func (s *TenantState) WorkersRunning() int { return int(s.workersRunning.Load()) }

// ConsumerRunning reports whether the tenant's queue consumer runs.
func (s *TenantState) ConsumerRunning() bool { return s.consumerRunning.Load() }

type phase int

const (
	running   phase = iota // consuming, or waiting to retry the consumer
	recycling              // replacing the consumer: cancel, drain, close, open
	stopping               // handling Stop: cancel, drain, close
)

// tenant is the tenant actor: it owns the consumer of the tenant's queue and
// routes deliveries to its workers, keeping exactly `desired` of them.
type tenant struct {
	id   string
	deps *Deps
	// ctx ends when this actor stops or restarts. A worker stuck in a batch
	// insert or its retries then gives it up. Otherwise it could write after
	// the tenant was deleted and created again under the same id.
	// workerDeps is deps with ctx as its Context.
	ctx        context.Context
	cancel     context.CancelFunc
	workerDeps *Deps
	state      *TenantState
	logger     *slog.Logger
	attempts   *attempts
	retryLog   *retryLog // of the workers' batch inserts
	router     *router

	desired  int
	workers  map[string]*actor.PID    // routed to
	retiring map[string]*actor.PID    // removed from the router, draining
	drains   map[string]*actor.Future // drain request of each retiring worker
	down     map[string]bool          // failed, waiting for their restart
	nextName int

	phase     phase
	stopReply *actor.PID // who sent Stop
	consumer  *transport.Consumer
	gen       int // counts consumer opens, to ignore stale retryConsumer timers
	retries   int // consecutive failed consumer opens
}

var _ actor.Actor = (*tenant)(nil)

// NewTenantProps returns the props of the tenant actor for tenant id with
// workerCount workers. state receives its live counts.
func NewTenantProps(id string, workerCount int, deps *Deps, state *TenantState) *actor.Props {
	withDefaults := *deps
	withDefaults.Options = deps.Options.withDefaults()
	deps = &withDefaults
	logger := deps.Logger.With("tenant_id", id)
	return actor.PropsFromProducer(func() actor.Actor {
		return &tenant{
			id:       id,
			deps:     deps,
			state:    state,
			logger:   logger,
			attempts: newAttempts(),
			retryLog: newRetryLog(),
			desired:  workerCount,
			workers:  make(map[string]*actor.PID),
			retiring: make(map[string]*actor.PID),
			drains:   make(map[string]*actor.Future),
			down:     make(map[string]bool),
		}
	}, actor.WithSupervisor(newRestartStrategy(deps.Options, logger, func() {
		deps.Metrics.WorkerRestarts.WithLabelValues(id).Inc()
	})))
}

// Receive handles one message of the tenant actor's mailbox.
func (t *tenant) Receive(c actor.Context) {
	switch m := c.Message().(type) {
	case *actor.Started:
		t.startContext()
		t.router = newRouter(c.ActorSystem().Root, t.deps.Options.BatchSize)
		t.scale(c)
		t.openConsumer(c)
	case *Resize:
		before := t.prefetch()
		t.desired = m.WorkerCount
		t.scale(c)
		if t.prefetch() != before {
			t.recycle(c)
		}
		c.Respond(t.status())
	case *GetStatus:
		c.Respond(t.status())
	case *Stop:
		t.stop(c)
	case *consumerEnded:
		t.onConsumerEnded(c, m)
	case *retryConsumer:
		if m.gen == t.gen && t.consumer == nil && t.phase == running {
			t.openConsumer(c)
		}
	case *workerUp:
		delete(t.down, m.pid.Id)
		t.publishCounts()
	case *workerDown:
		t.down[m.pid.Id] = true
		t.publishCounts()
	case *actor.Terminated:
		t.onTerminated(c, m.Who)
	case *actor.Restarting:
		t.cancel()
		t.closeConsumer()
	case *actor.Stopping:
		// Stopping arrives before the workers are stopped, so cancelling
		// here ends an insert that would otherwise keep a worker, and so
		// the stop, waiting. The phase keeps onTerminated from replacing
		// the workers that the stop ends, also when no Stop came first.
		t.phase = stopping
		t.cancel()
		t.closeConsumer()
	case *actor.Stopped:
		t.state.workersRunning.Store(0)
		t.state.consumerRunning.Store(false)
	}
}

func (t *tenant) status() *Status {
	return &Status{
		WorkerCount:     t.desired,
		WorkersRunning:  t.state.WorkersRunning(),
		ConsumerRunning: t.state.ConsumerRunning(),
	}
}

// publishCounts copies the live counts to the shared state and the gauges.
func (t *tenant) publishCounts() {
	n := len(t.workers) + len(t.retiring) - len(t.down)
	t.state.workersRunning.Store(int32(n))
	t.deps.Metrics.WorkersLive.WithLabelValues(t.id).Set(float64(n))
	running := t.consumer != nil
	t.state.consumerRunning.Store(running)
	v := 0.0
	if running {
		v = 1
	}
	t.deps.Metrics.ConsumerRunning.WithLabelValues(t.id).Set(v)
}

// prefetch returns Options.Prefetch, or else DefaultPrefetch.
func (t *tenant) prefetch() int {
	if n := t.deps.Options.Prefetch; n > 0 {
		return min(n, transport.MaxPrefetch)
	}
	return DefaultPrefetch(t.desired, t.deps.Options.BatchSize)
}

// DefaultPrefetch returns the prefetch count of a tenant with no
// Options.Prefetch: enough for every worker to hold two full batches,
// because acks are coalesced (see acker), so deliveries one worker has
// stored stay unacked until the workers holding lower tags have stored
// theirs.
func DefaultPrefetch(workers, batchSize int) int {
	return min(max(2*workers*batchSize, batchSize), transport.MaxPrefetch)
}

// scale spawns or retires workers until `desired` are routed to.
// startContext derives the context of this incarnation of the actor and of
// its workers.
func (t *tenant) startContext() {
	t.ctx, t.cancel = context.WithCancel(t.deps.Context)
	d := *t.deps
	d.Context = t.ctx
	t.workerDeps = &d
}

func (t *tenant) scale(c actor.Context) {
	for len(t.workers) < t.desired {
		t.spawnWorker(c)
	}
	for len(t.workers) > t.desired {
		for _, pid := range t.workers {
			t.retire(c, pid)
			break
		}
	}
	t.publishCounts()
}

func (t *tenant) spawnWorker(c actor.Context) {
	t.nextName++
	logger := t.logger.With("worker", t.nextName)
	pending := new(atomic.Int64)
	props := actor.PropsFromProducer(func() actor.Actor {
		return newWorker(t.id, t.workerDeps, t.attempts, t.retryLog, pending, logger)
	}, actor.WithReceiverMiddleware(reportLifecycle))
	pid := c.Spawn(props)
	t.workers[pid.Id] = pid
	t.router.add(pid, pending)
}

// reportLifecycle notifies the tenant when a worker (re)starts or fails, so
// workers_running counts only workers that can take deliveries.
func reportLifecycle(next actor.ReceiverFunc) actor.ReceiverFunc {
	return func(c actor.ReceiverContext, env *actor.MessageEnvelope) {
		switch env.Message.(type) {
		case *actor.Started:
			c.ActorSystem().Root.Send(c.Parent(), &workerUp{pid: c.Self()})
		case *actor.Restarting:
			c.ActorSystem().Root.Send(c.Parent(), &workerDown{pid: c.Self()})
		}
		next(c, env)
	}
}

// retire removes a worker from the router, waits for it to flush and ack
// what it already has, then stops it. Because the router lock guarantees no
// delivery reaches it after removal, stopping it loses nothing.
func (t *tenant) retire(c actor.Context, pid *actor.PID) {
	t.router.remove(pid)
	delete(t.workers, pid.Id)
	t.retiring[pid.Id] = pid
	f := c.RequestFuture(pid, &drainRequest{}, t.deps.Options.DrainTimeout)
	t.drains[pid.Id] = f
	c.ReenterAfter(f, func(_ any, err error) {
		if err != nil {
			t.logger.Warn("tenant: retiring worker did not drain in time; stopping it", "worker", pid.Id, "err", err)
		}
		c.Stop(pid)
	})
}

func (t *tenant) onTerminated(c actor.Context, pid *actor.PID) {
	if _, ok := t.retiring[pid.Id]; ok {
		delete(t.retiring, pid.Id)
		delete(t.drains, pid.Id)
		delete(t.down, pid.Id)
		t.publishCounts()
		return
	}
	if _, ok := t.workers[pid.Id]; !ok || t.phase == stopping {
		return
	}

	// A worker stopped without being retired. Deliveries still in its
	// mailbox are lost to this process, so the consumer is recycled: closing
	// its channel makes the broker requeue them.
	t.logger.Error("tenant: worker stopped unexpectedly; replacing it and recycling the consumer", "worker", pid.Id)
	t.router.remove(pid)
	delete(t.workers, pid.Id)
	delete(t.down, pid.Id)
	t.deps.Metrics.WorkerRestarts.WithLabelValues(t.id).Inc()
	t.scale(c)
	t.recycle(c)
}

// openConsumer starts consuming. When that fails, for example because the
// queues were deleted from outside or were never declared for a tenant
// loaded at start, it declares them and tries once more. After a second
// failure it retries with backoff.
func (t *tenant) openConsumer(c actor.Context) {
	ctx := t.ctx
	reconnected := t.deps.Broker.Reconnected()
	cons, err := t.deps.Broker.Consume(ctx, t.id, t.prefetch())
	if err != nil {
		if dErr := t.deps.Broker.DeclareTenant(ctx, t.id); dErr == nil {
			cons, err = t.deps.Broker.Consume(ctx, t.id, t.prefetch())
		}
	}
	t.gen++
	if err != nil {
		t.retries++
		wait := backoff(200*time.Millisecond, 5*time.Second, t.retries)
		t.logger.Warn("tenant: consumer did not start; retrying", "err", err, "attempt", t.retries, "wait", wait)
		go retryAfter(ctx, wait, reconnected, c.ActorSystem().Root, c.Self(), t.gen)
		t.publishCounts()
		return
	}
	if t.retries > 0 {
		t.logger.Info("tenant: consumer started after retries", "attempts", t.retries+1)
	}
	t.retries = 0
	t.consumer = cons
	t.publishCounts()
	go forward(cons, t.router, c.ActorSystem().Root, c.Self())
}

// retryAfter sends retryConsumer after wait, or as soon as the broker
// connection is re-dialled.
func retryAfter(ctx context.Context, wait time.Duration, reconnected <-chan struct{},
	root *actor.RootContext, tenant *actor.PID, gen int) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return
	case <-timer.C:
	case <-reconnected:
	}
	root.Send(tenant, &retryConsumer{gen: gen})
}

// forward routes every delivery of cons to a worker until the consumer ends,
// then notifies the tenant actor.
func forward(cons *transport.Consumer, r *router, root *actor.RootContext, tenant *actor.PID) {
	acks := newAcker()
	for d := range cons.Deliveries() {
		msg := &delivery{Delivery: new(amqp.Delivery), acks: acks}
		*msg.Delivery = d
		if !r.route(msg) {
			_ = acks.nack(msg.Delivery) // no worker yet: let the broker hold it
		}
	}
	root.Send(tenant, &consumerEnded{consumer: cons, err: cons.Err()})
}

func (t *tenant) onConsumerEnded(c actor.Context, m *consumerEnded) {
	if m.consumer != t.consumer {
		return // a consumer this actor already closed
	}
	if t.phase == running {
		t.logger.Warn("tenant: consumer ended; restarting it", "err", m.err)
		t.phase = recycling
	}
	t.drainWorkers(c, func() {
		t.closeConsumer()
		t.publishCounts()
		switch t.phase {
		case stopping:
			c.Send(t.stopReply, &Stopped{})
		case recycling:
			t.phase = running
			t.openConsumer(c)
		}
	})
}

// recycle replaces the consumer so it picks up a new prefetch, or so that
// the broker requeues deliveries a lost worker held.
func (t *tenant) recycle(c actor.Context) {
	// While a recycle or stop runs, or while no consumer runs, the next
	// open already uses the current settings.
	if t.phase == running && t.consumer != nil {
		t.phase = recycling
		t.cancelConsumer()
	}
}

func (t *tenant) stop(c actor.Context) {
	t.stopReply = c.Sender()
	wasConsuming := t.consumer != nil && t.phase == running
	t.phase = stopping
	if wasConsuming {
		t.cancelConsumer()
		return // onConsumerEnded finishes the stop
	}
	if t.consumer == nil {
		t.drainWorkers(c, func() { c.Send(t.stopReply, &Stopped{}) })
	}
	// Otherwise a recycle is cancelling the consumer; it ends in stopping.
}

// cancelConsumer sends basic.cancel, so the broker stops sending. The forward goroutine
// sends consumerEnded once the deliveries already sent have been routed.
func (t *tenant) cancelConsumer() {
	if err := t.consumer.Cancel(); err != nil {
		t.logger.Warn("tenant: consumer cancel failed; closing its channel", "err", err)
		_ = t.consumer.Close()
	}
}

func (t *tenant) closeConsumer() {
	if t.consumer == nil {
		return
	}
	if err := t.consumer.Close(); err != nil {
		t.logger.Debug("tenant: consumer close failed", "err", err)
	}
	t.consumer = nil
}

// drainWorkers requests every routed worker to flush and settle what it holds,
// waits for the drains of retiring workers too, and runs then once all
// have responded or timed out. Mailboxes are FIFO, so a worker responds only
// after every delivery routed to it before the drain request. Retiring
// workers count because acks are coalesced over runs of tags: one
// unsettled delivery of theirs would hold back the acks of everything
// after it when the channel closes. Their own drain request is awaited
// rather than a second one sent, which could reach a stopping worker and
// be dropped.
func (t *tenant) drainWorkers(c actor.Context, then func()) {
	futures := make([]*actor.Future, 0, len(t.workers)+len(t.drains))
	for _, pid := range t.workers {
		futures = append(futures, c.RequestFuture(pid, &drainRequest{}, t.deps.Options.DrainTimeout))
	}
	for _, f := range t.drains {
		futures = append(futures, f)
	}
	if len(futures) == 0 {
		then()
		return
	}
	remaining := len(futures)
	for _, f := range futures {
		c.ReenterAfter(f, func(_ any, err error) {
			if err != nil {
				t.logger.Warn("tenant: worker did not drain in time", "err", err)
			}
			remaining--
			if remaining == 0 {
				then()
			}
		})
	}
}
