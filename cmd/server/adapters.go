package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/go-messaging-system/messaging/api"
	"github.com/go-messaging-system/messaging/persistence"
	"github.com/go-messaging-system/messaging/supervisor"
	"github.com/go-messaging-system/messaging/transport"
)

// tenantService serves the API's tenant routes from the supervisor.
type tenantService struct{ sup *supervisor.Supervisor }

var _ api.Tenants = tenantService{}

func view(t supervisor.Tenant) api.TenantView {
	return api.TenantView{
		ID:             t.ID,
		Name:           t.Name,
		WorkerCount:    t.WorkerCount,
		WorkersRunning: t.WorkersRunning,
		CreatedAt:      t.CreatedAt,
	}
}

func (s tenantService) Create(ctx context.Context, id, name string, workerCount int) (api.TenantView, error) {
	t, err := s.sup.Create(ctx, persistence.Tenant{ID: id, Name: name, WorkerCount: workerCount})
	return view(t), apiError(err)
}

func (s tenantService) List(ctx context.Context) ([]api.TenantView, error) {
	ts, err := s.sup.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.TenantView, len(ts))
	for i, t := range ts {
		out[i] = view(t)
	}
	return out, nil
}

func (s tenantService) Get(ctx context.Context, id string) (api.TenantView, error) {
	t, err := s.sup.Get(ctx, id)
	return view(t), err
}

func (s tenantService) Resize(ctx context.Context, id string, workerCount int) (api.TenantView, error) {
	t, err := s.sup.Resize(ctx, id, workerCount)
	return view(t), apiError(err)
}

func (s tenantService) Delete(ctx context.Context, id string) error {
	return apiError(s.sup.Delete(ctx, id))
}

// apiError converts the supervisor's ErrDeleting into the API's
// ErrTenantDeleting and marks its ErrStopped as api.ErrShuttingDown and its
// timeouts as api.ErrChangeNotApplied or api.ErrChangeMaybeApplied, all of
// which map to 503. It returns other errors unchanged.
func apiError(err error) error {
	switch {
	case errors.Is(err, supervisor.ErrDeleting):
		return api.ErrTenantDeleting
	case errors.Is(err, supervisor.ErrStopped):
		return fmt.Errorf("%w: %w", api.ErrShuttingDown, err)
	case errors.Is(err, supervisor.ErrNotApplied):
		return fmt.Errorf("%w: %w", api.ErrChangeNotApplied, err)
	case errors.Is(err, supervisor.ErrMaybeApplied):
		return fmt.Errorf("%w: %w", api.ErrChangeMaybeApplied, err)
	}
	return err
}

// publisher publishes only for tenants the supervisor reports available, so
// a message for a deleted tenant is rejected instead of vanishing in the
// exchange. While a delete of the tenant is in progress it returns
// api.ErrTenantDeleting, because a delete that fails keeps the tenant. A
// publish needs the tenant's queue and the broker's publish connection,
// not its actor: during a shutdown, once the actor has stopped, a publish
// still lands in the queue for the next start.
type publisher struct {
	broker *transport.Broker
	sup    *supervisor.Supervisor
}

func (p publisher) Publish(ctx context.Context, tenantID string, msgs []transport.OutgoingMessage) error {
	if err := p.sup.Available(tenantID); err != nil {
		return apiError(err)
	}
	return p.broker.Publish(ctx, tenantID, msgs)
}
