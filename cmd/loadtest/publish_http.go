package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/go-messaging-system/messaging/api"
)

// httpPublisher posts each job as one batch to POST /api/v1/messages with
// the tenant's token. The server returns 202 once the broker confirmed
// every message.
type httpPublisher struct {
	api     *apiClient
	tenants []string
	tokens  []string
	size    int
}

var _ publisher = (*httpPublisher)(nil)

// tenantTokens signs a tenant token for each tenant, valid for ttl.
func tenantTokens(secret string, tenants []string, ttl time.Duration) ([]string, error) {
	tokens := make([]string, len(tenants))
	for i, id := range tenants {
		tok, err := api.SignToken([]byte(secret), api.Claims{Role: api.RoleTenant, TenantID: id}, ttl)
		if err != nil {
			return nil, err
		}
		tokens[i] = tok
	}
	return tokens, nil
}

// send posts the job and returns after the server's response, so its
// wait function only returns the result.
func (p *httpPublisher) send(ctx context.Context, j job) (func(context.Context) error, error) {
	err := p.post(ctx, j)
	return func(context.Context) error { return err }, nil
}

func (p *httpPublisher) post(ctx context.Context, j job) error {
	var body bytes.Buffer
	body.WriteString(`{"messages":[`)
	for seq := j.first; seq < j.first+j.n; seq++ {
		if seq > j.first {
			body.WriteByte(',')
		}
		body.WriteString(`{"message_id":`)
		body.WriteString(strconv.Quote(messageID(seq)))
		body.WriteString(`,"payload":`)
		body.Write(payload(seq, p.size))
		body.WriteByte('}')
	}
	body.WriteString(`]}`)

	var res struct {
		Accepted int `json:"accepted"`
	}
	err := p.api.do(ctx, http.MethodPost, "/api/v1/messages", p.tokens[j.tenant], body.Bytes(), http.StatusAccepted, &res)
	if err != nil {
		return classifyHTTPError(err)
	}
	if res.Accepted != j.n {
		return fmt.Errorf("server accepted %d of %d messages for tenant %s", res.Accepted, j.n, p.tenants[j.tenant])
	}
	return nil
}

// classifyHTTPError marks failures that a retry may overcome: a
// connection error, 429 or a 5xx status.
func classifyHTTPError(err error) error {
	var se *statusError
	if errors.As(err, &se) && se.status != http.StatusTooManyRequests && se.status < 500 {
		return err
	}
	return retryableError{err}
}

func (p *httpPublisher) close() error { return nil }
