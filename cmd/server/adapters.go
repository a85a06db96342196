package main

import (
	"context"

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
	return view(t), err
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
	return view(t), err
}

func (s tenantService) Delete(ctx context.Context, id string) error {
	return s.sup.Delete(ctx, id)
}

// publisher publishes only for tenants whose actor runs, so a message for a
// deleted tenant is rejected instead of vanishing in the exchange.
type publisher struct {
	broker *transport.Broker
	sup    *supervisor.Supervisor
}

func (p publisher) Publish(ctx context.Context, tenantID string, msgs []transport.OutgoingMessage) error {
	if !p.sup.Running(tenantID) {
		return persistence.ErrTenantNotFound
	}
	return p.broker.Publish(ctx, tenantID, msgs)
}
