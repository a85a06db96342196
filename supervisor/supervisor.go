// Package supervisor runs the root actor, which spawns one tenant actor per
// row of the tenants table and keeps that set in step with the table. Tenant
// creation, resizing and deletion are requests to the root actor, which
// responds once they are done.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/go-messaging-system/messaging/actors"
	"github.com/go-messaging-system/messaging/persistence"
)

// ErrStopped is returned by requests made once Shutdown has begun.
var ErrStopped = errors.New("supervisor stopped")

// ErrDeleting is returned for a tenant while a delete of it is in
// progress. The tenant may exist afterwards: a delete that fails starts it
// again.
var ErrDeleting = errors.New("tenant is being deleted")

// ErrNotApplied is returned by a Create, Resize or Delete whose wait ended
// while the request was still queued for the root actor, which then drops
// it: the change never takes effect. The root actor applies changes one
// at a time, so a slow delete holds up the ones behind it.
var ErrNotApplied = errors.New("request timed out before it was applied")

// ErrMaybeApplied is returned by a Create, Resize or Delete whose wait
// ended after the root actor had taken the request up. The change goes on
// and may take effect, so the caller has to read the tenant to find out.
var ErrMaybeApplied = errors.New("request timed out while being applied")

// Store is the part of the database that the supervisor uses.
type Store interface {
	CreateTenant(ctx context.Context, t persistence.Tenant) (persistence.Tenant, error)
	GetTenant(ctx context.Context, id string) (persistence.Tenant, error)
	ListTenants(ctx context.Context) ([]persistence.Tenant, error)
	SetWorkerCount(ctx context.Context, id string, n int) (persistence.Tenant, error)
	DeleteTenant(ctx context.Context, id string) error
	DeleteTenantWith(ctx context.Context, id string, beforeCommit func(context.Context) error) error
}

// Broker is the part of the RabbitMQ transport that the supervisor uses.
type Broker interface {
	DeclareTenant(ctx context.Context, tenantID string) error
	DeleteTenant(ctx context.Context, tenantID string) error
}

// Config tunes the supervisor.
type Config struct {
	// SyncInterval is how often the tenants table is reloaded, default 5s.
	SyncInterval time.Duration
	// RequestTimeout bounds a create, resize or delete, default 60s.
	RequestTimeout time.Duration
}

// Tenant is a tenant with its live worker count.
type Tenant struct {
	persistence.Tenant
	WorkersRunning  int
	ConsumerRunning bool
}

// entry is one tenant actor known to the supervisor.
type entry struct {
	pid         *actor.PID
	state       *actors.TenantState
	workerCount int // as last sent to the actor
	// stopping is set once the actor is asked to stop for a delete or
	// because the tenant's row is gone, not by Shutdown. A tenant that runs
	// again afterwards gets a new entry.
	stopping bool
	// deleting is set while a delete request stops the actor and removes
	// the tenant.
	deleting bool
}

// Supervisor is the handle of the root actor. Its methods are safe for
// concurrent use.
type Supervisor struct {
	system *actor.ActorSystem
	pid    *actor.PID
	store  Store
	cfg    Config
	logger *slog.Logger

	mu           sync.RWMutex
	entries      map[string]*entry // written only by the root actor
	shuttingDown bool              // set by the root actor when Shutdown begins
	stopped      bool
}

// Start spawns the root actor, which loads every tenant and starts its
// tenant actor, and returns once that first load is done.
func Start(ctx context.Context, system *actor.ActorSystem, store Store, broker Broker,
	deps *actors.Deps, cfg Config) (*Supervisor, error) {
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = 5 * time.Second
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = time.Minute
	}
	s := &Supervisor{
		system:  system,
		store:   store,
		cfg:     cfg,
		logger:  deps.Logger,
		entries: make(map[string]*entry),
	}
	root := &rootActor{sup: s, store: store, broker: broker, deps: deps, logger: deps.Logger}
	strategy := actors.NewRestartStrategy(200*time.Millisecond, 30*time.Second,
		func(child *actor.PID, reason any, delay time.Duration) {
			deps.Logger.Error("supervisor: tenant actor failed; restarting it", "actor", child.Id, "err", reason, "wait", delay)
		})
	pid, err := system.Root.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return root },
		actor.WithSupervisor(strategy)), "supervisor")
	if err != nil {
		return nil, fmt.Errorf("spawn supervisor: %w", err)
	}
	s.pid = pid

	if _, err := s.request(ctx, &loadRequest{}); err != nil {
		system.Root.Stop(pid)
		return nil, fmt.Errorf("load tenants: %w", err)
	}
	return s, nil
}

// request sends msg to the root actor and waits for its *reply. A create,
// resize or delete that times out returns an error wrapping ErrNotApplied
// or ErrMaybeApplied, and context.DeadlineExceeded when the caller's
// deadline ended the wait.
func (s *Supervisor) request(ctx context.Context, msg any) (any, error) {
	s.mu.RLock()
	stopped := s.stopped
	s.mu.RUnlock()
	if stopped {
		return nil, ErrStopped
	}
	timeout := s.cfg.RequestTimeout
	ctxBound := false
	if d, ok := ctx.Deadline(); ok && time.Until(d) < timeout {
		timeout, ctxBound = time.Until(d), true
	}
	if timeout <= 0 {
		return nil, context.DeadlineExceeded
	}
	ch, isChange := msg.(change)
	if isChange {
		ch.ticket().deadline = time.Now().Add(timeout)
	}
	res, err := s.system.Root.RequestFuture(s.pid, msg, timeout).Result()
	if errors.Is(err, actor.ErrTimeout) && ctxBound {
		// The caller's deadline, not RequestTimeout, ended the wait, so
		// the error is the one that callers and the API test for.
		err = context.DeadlineExceeded
	}
	if err != nil && isChange {
		outcome := ErrMaybeApplied
		if ch.ticket().abandon() {
			outcome = ErrNotApplied
		}
		return nil, fmt.Errorf("supervisor request %T: %w: %w", msg, outcome, err)
	}
	if err != nil {
		return nil, fmt.Errorf("supervisor request %T: %w", msg, err)
	}
	r, ok := res.(*reply)
	if !ok {
		return nil, fmt.Errorf("supervisor request %T: unexpected response %T", msg, res)
	}
	return r.value, r.err
}

// Create stores a new tenant, declares its queues and starts its actor.
func (s *Supervisor) Create(ctx context.Context, t persistence.Tenant) (Tenant, error) {
	v, err := s.request(ctx, &createRequest{tenant: t})
	if err != nil {
		return Tenant{}, err
	}
	return v.(Tenant), nil
}

// Resize stores the tenant's new worker count and applies it at runtime.
func (s *Supervisor) Resize(ctx context.Context, id string, workerCount int) (Tenant, error) {
	v, err := s.request(ctx, &resizeRequest{id: id, workerCount: workerCount})
	if err != nil {
		return Tenant{}, err
	}
	return v.(Tenant), nil
}

// Delete stops the tenant's actor, then removes its row, partition, queues
// and metric series. When that fails, nothing is removed and the tenant's
// actor is started again. A Delete or Resize of the tenant that the root
// actor takes up while a delete stops the tenant's actor returns
// ErrDeleting. One that arrives while the delete works on the database and
// the broker waits for it to end.
func (s *Supervisor) Delete(ctx context.Context, id string) error {
	_, err := s.request(ctx, &deleteRequest{id: id})
	return err
}

// Get reads the tenant from the database and adds its live counts.
func (s *Supervisor) Get(ctx context.Context, id string) (Tenant, error) {
	t, err := s.store.GetTenant(ctx, id)
	if err != nil {
		return Tenant{}, err
	}
	return s.withState(t), nil
}

// List reads every tenant from the database and adds the live counts.
func (s *Supervisor) List(ctx context.Context) ([]Tenant, error) {
	ts, err := s.store.ListTenants(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Tenant, len(ts))
	for i, t := range ts {
		out[i] = s.withState(t)
	}
	return out, nil
}

func (s *Supervisor) withState(t persistence.Tenant) Tenant {
	s.mu.RLock()
	e := s.entries[t.ID]
	s.mu.RUnlock()
	out := Tenant{Tenant: t}
	if e != nil {
		out.WorkersRunning = e.state.WorkersRunning()
		out.ConsumerRunning = e.state.ConsumerRunning()
	}
	return out
}

// Running reports whether a tenant actor runs for id and is not being
// stopped, by Shutdown either.
func (s *Supervisor) Running(id string) bool {
	if s.Available(id) != nil {
		return false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return !s.shuttingDown
}

// Available returns nil when a tenant actor runs for id and is not being
// stopped, ErrDeleting while a delete of the tenant is in progress, and
// persistence.ErrTenantNotFound otherwise. The HTTP publish path checks it
// before publishing. It does not wait for the root actor, which runs the
// database part of a delete in its own turn. It stays nil for the tenants
// that Shutdown stops, because their queues stay: a message published
// while the server shuts down waits there for the next start.
func (s *Supervisor) Available(id string) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e := s.entries[id]
	switch {
	case e == nil:
		return persistence.ErrTenantNotFound
	case e.deleting:
		return ErrDeleting
	case e.stopping:
		return persistence.ErrTenantNotFound
	}
	return nil
}

// Ready returns an error naming the tenants whose consumer does not run.
func (s *Supervisor) Ready() error {
	s.mu.RLock()
	var down []string
	for id, e := range s.entries {
		if !e.stopping && !e.state.ConsumerRunning() {
			down = append(down, id)
		}
	}
	stopped := s.shuttingDown || s.stopped
	s.mu.RUnlock()
	if stopped {
		return ErrStopped
	}
	if len(down) == 0 {
		return nil
	}
	sort.Strings(down)
	if len(down) > 10 {
		return fmt.Errorf("consumers not running for %d tenants, including %v", len(down), down[:10])
	}
	return fmt.Errorf("consumers not running for tenants %v", down)
}

// Shutdown stops every tenant actor gracefully: each cancels its consumer,
// lets its workers flush and ack, and closes its channel. A delete already
// under way finishes first. Then it stops the root actor. Create, Resize
// and Delete return ErrStopped once it has begun. Available still reports
// the tenants, whose queues stay. Calling it twice is safe.
func (s *Supervisor) Shutdown(ctx context.Context) error {
	_, err := s.request(ctx, &shutdownRequest{})
	s.mu.Lock()
	already := s.stopped
	s.stopped = true
	s.mu.Unlock()
	if already || errors.Is(err, ErrStopped) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := s.system.Root.StopFuture(s.pid).Result(); err != nil {
		return fmt.Errorf("stop supervisor: %w", err)
	}
	return nil
}
