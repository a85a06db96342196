package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// row is one stored message.
type row struct {
	messageID   string
	publishedAt time.Time
	storedAt    time.Time
}

// rowSource reads what was stored for the run's tenants, by tenant index.
type rowSource interface {
	// count returns the number of rows stored for tenant i so far.
	count(ctx context.Context, i int) (int, error)
	// rows returns every row stored for tenant i.
	rows(ctx context.Context, i int) ([]row, error)
}

// apiSource walks each tenant's messages with the list API's cursor. The
// cursor returns every committed message once, so a walk that continues from
// where the last one stopped reads each stored row exactly once.
type apiSource struct {
	api     *apiClient
	tenants []string

	mu      sync.Mutex
	cursors []string
	seen    [][]row
}

var _ rowSource = (*apiSource)(nil)

// pageLimit is the largest page the list API returns.
const pageLimit = 1000

func newAPISource(a *apiClient, tenants []string) *apiSource {
	return &apiSource{
		api:     a,
		tenants: tenants,
		cursors: make([]string, len(tenants)),
		seen:    make([][]row, len(tenants)),
	}
}

// walk reads the pages after tenant i's cursor until the last one.
func (s *apiSource) walk(ctx context.Context, i int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		path := fmt.Sprintf("/api/v1/tenants/%s/messages?limit=%d&cursor=%s",
			s.tenants[i], pageLimit, url.QueryEscape(s.cursors[i]))
		var p messagePage
		if err := s.api.do(ctx, http.MethodGet, path, s.api.admin, nil, http.StatusOK, &p); err != nil {
			return err
		}
		for _, m := range p.Messages {
			s.seen[i] = append(s.seen[i], row{m.MessageID, m.PublishedAt, m.StoredAt})
		}
		if p.NextCursor != "" {
			s.cursors[i] = p.NextCursor
		}
		if !p.HasMore {
			return nil
		}
	}
}

func (s *apiSource) count(ctx context.Context, i int) (int, error) {
	if err := s.walk(ctx, i); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen[i]), nil
}

func (s *apiSource) rows(ctx context.Context, i int) ([]row, error) {
	if err := s.walk(ctx, i); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[i], nil
}

// dbSource reads the messages table directly.
type dbSource struct {
	pool    *pgxpool.Pool
	tenants []string
}

var _ rowSource = (*dbSource)(nil)

func (s *dbSource) count(ctx context.Context, i int) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM messages WHERE tenant_id = $1`, s.tenants[i]).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count messages of tenant %s: %w", s.tenants[i], err)
	}
	return n, nil
}

func (s *dbSource) rows(ctx context.Context, i int) ([]row, error) {
	res, err := s.pool.Query(ctx,
		`SELECT message_id, published_at, stored_at FROM messages WHERE tenant_id = $1`, s.tenants[i])
	if err != nil {
		return nil, fmt.Errorf("read messages of tenant %s: %w", s.tenants[i], err)
	}
	defer res.Close()
	var out []row
	for res.Next() {
		var r row
		if err := res.Scan(&r.messageID, &r.publishedAt, &r.storedAt); err != nil {
			return nil, fmt.Errorf("read messages of tenant %s: %w", s.tenants[i], err)
		}
		out = append(out, r)
	}
	if err := res.Err(); err != nil {
		return nil, fmt.Errorf("read messages of tenant %s: %w", s.tenants[i], err)
	}
	return out, nil
}

// memorySource collects what the broker baseline's consumers received.
type memorySource struct {
	mu   sync.Mutex
	seen [][]row
}

var _ rowSource = (*memorySource)(nil)

func newMemorySource(tenants int) *memorySource {
	return &memorySource{seen: make([][]row, tenants)}
}

func (s *memorySource) add(i int, r row) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen[i] = append(s.seen[i], r)
}

func (s *memorySource) count(_ context.Context, i int) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen[i]), nil
}

func (s *memorySource) rows(_ context.Context, i int) ([]row, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]row(nil), s.seen[i]...), nil
}
