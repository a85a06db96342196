package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/go-messaging-system/messaging/actors"
	"github.com/go-messaging-system/messaging/persistence"
)

// Requests to the root actor. The response to each is a *reply, except to
// a change that the root actor drops because its caller stopped waiting.
type (
	loadRequest   struct{}
	createRequest struct {
		tk     changeTicket
		tenant persistence.Tenant
	}
	resizeRequest struct {
		tk          changeTicket
		id          string
		workerCount int
	}
	deleteRequest struct {
		tk changeTicket
		id string
	}
	shutdownRequest struct{}
	syncTick        struct{}
)

// change is a request that changes a tenant: a create, resize or delete.
type change interface {
	ticket() *changeTicket
	tenantID() string
}

func (m *createRequest) ticket() *changeTicket { return &m.tk }
func (m *resizeRequest) ticket() *changeTicket { return &m.tk }
func (m *deleteRequest) ticket() *changeTicket { return &m.tk }
func (m *createRequest) tenantID() string      { return m.tenant.ID }
func (m *resizeRequest) tenantID() string      { return m.id }
func (m *deleteRequest) tenantID() string      { return m.id }

// States of a changeTicket.
const (
	ticketQueued int32 = iota
	ticketTaken
	ticketAbandoned
)

// changeTicket decides whether a change runs when its caller stops waiting
// first. The root actor takes the ticket before it applies the change, and
// the caller abandons it when its wait ends. Only the first of the two
// succeeds, so the caller knows whether the change may still take effect.
type changeTicket struct {
	// deadline is when the caller's wait ends, set before the request is
	// sent.
	deadline time.Time
	state    atomic.Int32
}

// take reports whether the root actor may apply the change. It fails once
// the caller has abandoned the ticket or its deadline has passed, since
// the caller has then stopped waiting, or is about to, and reports the
// change as not applied.
func (t *changeTicket) take() bool {
	if !time.Now().Before(t.deadline) {
		t.state.CompareAndSwap(ticketQueued, ticketAbandoned)
	}
	return t.state.CompareAndSwap(ticketQueued, ticketTaken)
}

// abandon is called by the caller when its wait has ended, and reports
// whether the change will never be applied.
func (t *changeTicket) abandon() bool {
	t.state.CompareAndSwap(ticketQueued, ticketAbandoned)
	return t.state.Load() == ticketAbandoned
}

type reply struct {
	value any
	err   error
}

// rootActor is the top of the actor tree. It alone writes sup.entries.
type rootActor struct {
	sup    *Supervisor
	store  Store
	broker Broker
	deps   *actors.Deps
	logger *slog.Logger

	syncTimer *time.Timer
	stopping  bool
	// stops counts the tenant actors being stopped, for a delete, a sync
	// or Shutdown. Shutdown responds to waiters once it reaches zero.
	stops   int
	waiters []*actor.PID
}

// Receive handles one message of the root actor's mailbox.
func (r *rootActor) Receive(c actor.Context) {
	if ch, ok := c.Message().(change); ok && !ch.ticket().take() {
		// The caller has stopped waiting and reports the change as not
		// applied, so the change must not run and no reply is sent.
		r.logger.Warn("supervisor: dropping a tenant change whose caller stopped waiting",
			"request", fmt.Sprintf("%T", ch), "tenant_id", ch.tenantID())
		return
	}
	switch m := c.Message().(type) {
	case *loadRequest:
		err := r.sync(c)
		c.Respond(&reply{err: err})
		r.scheduleSync(c)
	case *syncTick:
		if err := r.sync(c); err != nil {
			r.logger.Warn("supervisor: tenant sync failed", "err", err)
		}
		r.scheduleSync(c)
	case *createRequest:
		r.create(c, m.tenant)
	case *resizeRequest:
		r.resize(c, m)
	case *deleteRequest:
		r.delete(c, m.id)
	case *shutdownRequest:
		r.shutdown(c)
	case *actor.Stopping:
		if r.syncTimer != nil {
			r.syncTimer.Stop()
		}
	}
}

func (r *rootActor) ctx() context.Context { return r.deps.Context }

func (r *rootActor) scheduleSync(c actor.Context) {
	if r.stopping {
		return
	}
	self, root := c.Self(), c.ActorSystem().Root
	r.syncTimer = time.AfterFunc(r.sup.cfg.SyncInterval, func() { root.Send(self, &syncTick{}) })
}

// sync makes the running tenant actors match the tenants table: it starts
// missing ones, stops those whose row is gone and applies changed worker
// counts. Tenants whose actor is being stopped are left alone.
func (r *rootActor) sync(c actor.Context) error {
	if r.stopping {
		return nil
	}
	tenants, err := r.store.ListTenants(r.ctx())
	if err != nil {
		return fmt.Errorf("list tenants: %w", err)
	}
	seen := make(map[string]bool, len(tenants))
	for _, t := range tenants {
		seen[t.ID] = true
		e := r.sup.entries[t.ID]
		switch {
		case e == nil:
			// No declaration here: the tenant actor declares the queues
			// when consuming fails because they are missing, so a start
			// with many tenants costs no extra round trips, and a broker
			// fault delays only that tenant.
			r.spawn(c, t)
		case !e.stopping && e.workerCount != t.WorkerCount:
			r.logger.Info("supervisor: worker count changed in the tenants table", "tenant_id", t.ID,
				"worker_count", t.WorkerCount)
			e.workerCount = t.WorkerCount
			c.Send(e.pid, &actors.Resize{WorkerCount: t.WorkerCount})
		}
	}
	for id, e := range r.sup.entries {
		if !seen[id] && !e.stopping {
			r.logger.Info("supervisor: tenant row is gone; stopping its actor", "tenant_id", id)
			r.stopTenant(c, id, e, func() { r.forget(id) })
		}
	}
	return nil
}

// spawn starts the tenant's actor and records it.
func (r *rootActor) spawn(c actor.Context, t persistence.Tenant) {
	state := &actors.TenantState{}
	pid := c.Spawn(actors.NewTenantProps(t.ID, t.WorkerCount, r.deps, state))
	r.sup.mu.Lock()
	r.sup.entries[t.ID] = &entry{pid: pid, state: state, workerCount: t.WorkerCount}
	n := len(r.sup.entries)
	r.sup.mu.Unlock()
	r.deps.Metrics.Tenants.Set(float64(n))
	r.logger.Info("supervisor: tenant started", "tenant_id", t.ID, "worker_count", t.WorkerCount)
}

func (r *rootActor) create(c actor.Context, t persistence.Tenant) {
	fail := func(err error) { c.Respond(&reply{err: err}) }
	if r.stopping {
		fail(ErrStopped)
		return
	}
	if _, ok := r.sup.entries[t.ID]; ok {
		fail(persistence.ErrTenantExists)
		return
	}
	created, err := r.store.CreateTenant(r.ctx(), t)
	if err != nil {
		fail(err)
		return
	}
	if err := r.broker.DeclareTenant(r.ctx(), created.ID); err != nil {
		if dErr := r.store.DeleteTenant(r.ctx(), created.ID); dErr != nil {
			r.logger.Error("supervisor: rolling back tenant creation failed", "tenant_id", created.ID, "err", dErr)
		}
		fail(fmt.Errorf("declare queues of tenant %s: %w", created.ID, err))
		return
	}
	r.spawn(c, created)
	// The tenant actor handles Started before this request, so the status
	// already counts its workers.
	f := c.RequestFuture(r.sup.entries[created.ID].pid, &actors.GetStatus{}, r.sup.cfg.RequestTimeout)
	c.ReenterAfter(f, func(res any, _ error) {
		c.Respond(&reply{value: withStatus(created, res)})
	})
}

func (r *rootActor) resize(c actor.Context, m *resizeRequest) {
	e := r.sup.entries[m.id]
	switch {
	case r.stopping:
		c.Respond(&reply{err: ErrStopped})
		return
	case e != nil && e.deleting:
		c.Respond(&reply{err: ErrDeleting})
		return
	case e == nil || e.stopping:
		c.Respond(&reply{err: persistence.ErrTenantNotFound})
		return
	}
	t, err := r.store.SetWorkerCount(r.ctx(), m.id, m.workerCount)
	if err != nil {
		c.Respond(&reply{err: err})
		return
	}
	e.workerCount = t.WorkerCount
	f := c.RequestFuture(e.pid, &actors.Resize{WorkerCount: t.WorkerCount}, r.sup.cfg.RequestTimeout)
	c.ReenterAfter(f, func(res any, err error) {
		if err != nil {
			c.Respond(&reply{err: fmt.Errorf("resize tenant actor: %w", err)})
			return
		}
		c.Respond(&reply{value: withStatus(t, res)})
	})
}

func (r *rootActor) delete(c actor.Context, id string) {
	e := r.sup.entries[id]
	switch {
	case r.stopping:
		c.Respond(&reply{err: ErrStopped})
		return
	case e == nil:
		// The row may exist without an actor (created outside this
		// process since the last sync): delete what is there.
		c.Respond(&reply{err: r.removeTenant(id)})
		return
	case e.deleting:
		// The first delete may still fail and keep the tenant, so this
		// one must not report the tenant missing.
		c.Respond(&reply{err: ErrDeleting})
		return
	case e.stopping:
		// Stopped by the sync because its row is gone.
		c.Respond(&reply{err: persistence.ErrTenantNotFound})
		return
	}
	// Until this delete ends, Available reports the tenant as being
	// deleted rather than missing, because a delete that fails starts the
	// tenant again.
	r.sup.mu.Lock()
	e.deleting = true
	r.sup.mu.Unlock()
	r.stopTenant(c, id, e, func() {
		err := r.removeTenant(id)
		if err == nil || !r.resume(c, id) {
			r.forget(id)
		}
		c.Respond(&reply{err: err})
	})
}

// queueDeleteTimeout bounds the deletion of a tenant's queues. The deletion
// runs while the delete's transaction holds messages in ACCESS EXCLUSIVE
// mode, which stops every tenant's inserts, so it gets the same 3 s that
// the delete may already wait for that lock.
const queueDeleteTimeout = 3 * time.Second

// removeTenant deletes the tenant's row, partition and queues. The queues
// go last, inside the database transaction once the row is deleted and the
// partition dropped, and the transaction commits only when they are gone.
// A partition lock that times out or a broker that is down therefore
// leaves the tenant whole, with the messages in its queues, and a retried
// delete finds it. Queues deleted first would lose their messages when the
// database step failed after them. A row deleted first would leave queues
// that nothing remembers when the broker step failed after it.
func (r *rootActor) removeTenant(id string) error {
	queuesDeleted := false
	err := r.store.DeleteTenantWith(r.ctx(), id, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, queueDeleteTimeout)
		defer cancel()
		// NOTE: a queue deletion that the broker carries out after the
		// timeout is not undone. The transaction rolls back and the tenant
		// runs on with empty queues.
		if err := r.broker.DeleteTenant(ctx, id); err != nil {
			return fmt.Errorf("delete queues of tenant %s: %w", id, err)
		}
		queuesDeleted = true
		return nil
	})
	if err != nil {
		if queuesDeleted {
			r.logger.Error("supervisor: tenant queues deleted but the database delete did not commit; "+
				"retry the delete", "tenant_id", id, "err", err)
		}
		return err
	}
	r.logger.Info("supervisor: tenant deleted", "tenant_id", id)
	return nil
}

// resumeLookupTimeout bounds the read of a tenant's row after a failed
// delete.
const resumeLookupTimeout = 5 * time.Second

// resume starts the tenant's actor again after a failed delete, so that
// it goes on consuming at once rather than at the next sync, and reports
// whether it did. It reads the row first, because a delete whose commit
// failed may have removed it all the same. When the read fails, the next
// sync decides.
func (r *rootActor) resume(c actor.Context, id string) bool {
	if r.stopping {
		return false
	}
	ctx, cancel := context.WithTimeout(r.ctx(), resumeLookupTimeout)
	defer cancel()
	t, err := r.store.GetTenant(ctx, id)
	if err != nil {
		if !errors.Is(err, persistence.ErrTenantNotFound) {
			// NOTE: until that sync, Available reports the tenant missing,
			// so publishing for it gets 404 although its row may exist.
			r.logger.Warn("supervisor: tenant row unreadable after a failed delete; the next sync restarts it",
				"tenant_id", id, "err", err)
		}
		return false
	}
	r.logger.Info("supervisor: tenant delete failed; resuming the tenant", "tenant_id", id)
	r.spawn(c, t)
	return true
}

// stopTenant marks the tenant as stopping, which Available reports, then
// stops its actor gracefully and runs then once it has terminated.
func (r *rootActor) stopTenant(c actor.Context, id string, e *entry, then func()) {
	r.sup.mu.Lock()
	e.stopping = true
	r.sup.mu.Unlock()
	r.stopActor(c, id, e, then)
}

// stopActor stops a tenant actor gracefully and runs then once it has
// terminated.
func (r *rootActor) stopActor(c actor.Context, id string, e *entry, then func()) {
	r.stops++
	timeout := r.deps.Options.DrainTimeout + 5*time.Second
	f := c.RequestFuture(e.pid, &actors.Stop{}, timeout)
	c.ReenterAfter(f, func(_ any, err error) {
		if err != nil {
			r.logger.Warn("supervisor: tenant actor did not stop gracefully", "tenant_id", id, "err", err)
		}
		c.ReenterAfter(c.StopFuture(e.pid), func(any, error) {
			then()
			r.stops--
			r.respondIfStopped(c)
		})
	})
}

// forget drops the entry and the tenant's metric series.
func (r *rootActor) forget(id string) {
	r.sup.mu.Lock()
	delete(r.sup.entries, id)
	n := len(r.sup.entries)
	r.sup.mu.Unlock()
	r.deps.Metrics.ForgetTenant(id)
	r.deps.Metrics.Tenants.Set(float64(n))
}

// shutdown stops every tenant actor gracefully, in parallel, and responds
// when all have stopped, those that a delete or a sync was stopping
// included, so that no delete is cut off halfway. The entries stay and are
// not marked as stopping: the tenants' queues stay too, so Available goes
// on reporting them while the HTTP publishes in flight finish.
func (r *rootActor) shutdown(c actor.Context) {
	if sender := c.Sender(); sender != nil {
		r.waiters = append(r.waiters, sender)
	}
	if !r.stopping {
		r.stopping = true
		r.sup.mu.Lock()
		r.sup.shuttingDown = true
		r.sup.mu.Unlock()
		if r.syncTimer != nil {
			r.syncTimer.Stop()
		}
		for id, e := range r.sup.entries {
			if !e.stopping {
				r.stopActor(c, id, e, func() {})
			}
		}
	}
	r.respondIfStopped(c)
}

// respondIfStopped replies to the Shutdown requests once no tenant actor
// is stopping any more.
func (r *rootActor) respondIfStopped(c actor.Context) {
	if !r.stopping || r.stops > 0 {
		return
	}
	for _, w := range r.waiters {
		c.Send(w, &reply{})
	}
	r.waiters = nil
}

// withStatus combines a tenant row with a tenant actor's *actors.Status
// response; any other response leaves the live counts at zero.
func withStatus(t persistence.Tenant, res any) Tenant {
	out := Tenant{Tenant: t}
	if st, ok := res.(*actors.Status); ok {
		out.WorkersRunning = st.WorkersRunning
		out.ConsumerRunning = st.ConsumerRunning
	}
	return out
}
