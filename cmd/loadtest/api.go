package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// requestTimeout bounds one HTTP request to the server.
const requestTimeout = 30 * time.Second

// statusError is a response with an unexpected status.
type statusError struct {
	method, path string
	status       int
	body         string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("%s %s: status %d: %s", e.method, e.path, e.status, e.body)
}

// apiClient calls the server's HTTP API.
type apiClient struct {
	base   string
	client *http.Client
	admin  string // admin token
}

func newAPIClient(base, admin string, conns int) *apiClient {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = conns
	return &apiClient{
		base:   strings.TrimRight(base, "/"),
		client: &http.Client{Transport: transport, Timeout: requestTimeout},
		admin:  admin,
	}
}

func (a *apiClient) close() { a.client.CloseIdleConnections() }

// do sends body (raw JSON when it is []byte) and decodes a JSON response
// into out when out is not nil. A status other than want is a *statusError.
func (a *apiClient) do(ctx context.Context, method, path, token string, body any, want int, out any) error {
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		r = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			return fmt.Errorf("encode %s %s request: %w", method, path, err)
		}
		r = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, r)
	if err != nil {
		return fmt.Errorf("build %s %s request: %w", method, path, err)
	}
	if r != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+token)

	res, err := a.client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read %s %s response: %w", method, path, err)
	}
	if res.StatusCode != want {
		return &statusError{method: method, path: path, status: res.StatusCode, body: truncate(string(data), 300)}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decode %s %s response: %w", method, path, err)
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// tenantView is the API's tenant representation.
type tenantView struct {
	ID             string `json:"id"`
	WorkerCount    int    `json:"worker_count"`
	WorkersRunning int    `json:"workers_running"`
}

// createTenant creates the tenant, or reuses it when the id is taken.
func (a *apiClient) createTenant(ctx context.Context, id string, workers int) error {
	body := map[string]any{"id": id, "name": "loadtest " + id}
	if workers > 0 {
		body["worker_count"] = workers
	}
	err := a.do(ctx, http.MethodPost, "/api/v1/tenants", a.admin, body, http.StatusCreated, nil)
	var se *statusError
	if errors.As(err, &se) && se.status == http.StatusConflict {
		return nil
	}
	return err
}

func (a *apiClient) getTenant(ctx context.Context, id string) (tenantView, error) {
	var t tenantView
	err := a.do(ctx, http.MethodGet, "/api/v1/tenants/"+id, a.admin, nil, http.StatusOK, &t)
	return t, err
}

// deleteTenant deletes the tenant; one that is already gone is no error.
func (a *apiClient) deleteTenant(ctx context.Context, id string) error {
	err := a.do(ctx, http.MethodDelete, "/api/v1/tenants/"+id, a.admin, nil, http.StatusNoContent, nil)
	var se *statusError
	if errors.As(err, &se) && se.status == http.StatusNotFound {
		return nil
	}
	return err
}

// storedMessage is one message of the list API.
type storedMessage struct {
	MessageID   string    `json:"message_id"`
	PublishedAt time.Time `json:"published_at"`
	StoredAt    time.Time `json:"stored_at"`
}

type messagePage struct {
	Messages   []storedMessage `json:"messages"`
	NextCursor string          `json:"next_cursor"`
	HasMore    bool            `json:"has_more"`
}
