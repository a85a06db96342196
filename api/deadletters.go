package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"time"
	"unicode/utf8"

	"github.com/julienschmidt/httprouter"

	"github.com/go-messaging-system/messaging/transport"
)

// DeadLetters lists and replays the messages in a tenant's dead-letter
// queue. *transport.Broker implements it.
type DeadLetters interface {
	// ListDeadLetters returns up to limit messages without removing them.
	ListDeadLetters(ctx context.Context, tenantID string, limit int) ([]transport.DeadLetter, error)
	// ReplayDeadLetters moves the messages with the given message ids, or
	// all of them, back to the tenant's queue and returns how many it
	// moved.
	ReplayDeadLetters(ctx context.Context, tenantID string, ids []string, all bool) (int, error)
}

var _ DeadLetters = (*transport.Broker)(nil)

const (
	defaultDeadLetterLimit = 10
	// maxDeadLetterLimit is lower than maxLimit because a dead letter may
	// be a message that was too large to store.
	maxDeadLetterLimit = 100
	// maxReplayIDs caps the message_ids of one replay request.
	maxReplayIDs = 1000
)

type deadLetterView struct {
	MessageID string `json:"message_id"`
	Reason    string `json:"reason"`
	Detail    string `json:"detail"`
	Attempts  int    `json:"attempts"`
	// Payload is the body when it is valid UTF-8 JSON and not truncated.
	Payload json.RawMessage `json:"payload,omitempty"`
	// PayloadBase64 is the body, standard base64 with padding, otherwise.
	PayloadBase64    *string    `json:"payload_base64,omitempty"`
	PayloadBytes     int        `json:"payload_bytes"`
	PayloadTruncated bool       `json:"payload_truncated"`
	PublishedAt      *time.Time `json:"published_at"`
}

type deadLetterList struct {
	DeadLetters []deadLetterView `json:"dead_letters"`
}

type replayRequest struct {
	MessageIDs []string `json:"message_ids"`
	All        *bool    `json:"all"`
}

type replayResponse struct {
	Replayed int `json:"replayed"`
}

func (h *handler) listDeadLetters(w http.ResponseWriter, r *http.Request, _ httprouter.Params, tenantID string) {
	if !validTenantID(tenantID) {
		tenantNotFound(w)
		return
	}
	limit, err := parseDeadLetterQuery(r.URL.RawQuery)
	if err != nil {
		writeRequestError(w, err)
		return
	}
	if !h.checkDeadLetters(w, r, tenantID) {
		return
	}

	letters, err := h.deadLetters.ListDeadLetters(r.Context(), tenantID, limit)
	if err != nil {
		h.writeBackendError(w, r, "list dead letters", err)
		return
	}
	out := deadLetterList{DeadLetters: make([]deadLetterView, len(letters))}
	for i, d := range letters {
		out.DeadLetters[i] = h.toDeadLetterView(d)
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) replayDeadLetters(w http.ResponseWriter, r *http.Request, _ httprouter.Params, tenantID string) {
	if !validTenantID(tenantID) {
		tenantNotFound(w)
		return
	}
	data, err := readJSONBody(w, r, h.cfg.MaxBodyBytes)
	if err != nil {
		writeRequestError(w, err)
		return
	}
	ids, all, err := parseReplayRequest(data)
	if err != nil {
		writeRequestError(w, err)
		return
	}
	if !h.checkDeadLetters(w, r, tenantID) {
		return
	}

	n, err := h.deadLetters.ReplayDeadLetters(r.Context(), tenantID, ids, all)
	if n > 0 {
		h.logger.InfoContext(r.Context(), "api: dead letters replayed", "tenant_id", tenantID, "count", n)
	}
	if err != nil {
		h.writeBackendError(w, r, "replay dead letters", err)
		return
	}
	writeJSON(w, http.StatusOK, replayResponse{Replayed: n})
}

// checkDeadLetters writes the error response and returns false when this
// server has no dead-letter access or the tenant does not exist.
func (h *handler) checkDeadLetters(w http.ResponseWriter, r *http.Request, tenantID string) bool {
	if h.deadLetters == nil {
		writeProblem(w, http.StatusNotImplemented, "this server does not serve dead letters")
		return false
	}
	if _, err := h.tenants.Get(r.Context(), tenantID); err != nil {
		h.writeBackendError(w, r, "look up the tenant", err)
		return false
	}
	return true
}

// parseDeadLetterQuery accepts only limit, at most once, 1..100.
func parseDeadLetterQuery(rawQuery string) (int, error) {
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return 0, badRequest("invalid query string: %v", err)
	}
	for name, values := range query {
		if name != "limit" {
			return 0, badRequest("unknown query parameter %q; use limit", truncate(name, maxNameInError))
		}
		if len(values) > 1 {
			return 0, badRequest("query parameter %q appears more than once", name)
		}
	}
	values, ok := query["limit"]
	if !ok {
		return defaultDeadLetterLimit, nil
	}
	return parseLimitUpTo(values[0], maxDeadLetterLimit)
}

// parseReplayRequest decodes {"message_ids": [...]} or {"all": true}. It
// drops repeated ids.
func parseReplayRequest(data []byte) ([]string, bool, error) {
	var req replayRequest
	present, err := decodeObject(data, &req)
	if err != nil {
		return nil, false, err
	}
	switch {
	case present["message_ids"] && present["all"]:
		return nil, false, badRequest(`send either "message_ids" or "all", not both`)
	case present["all"]:
		if req.All == nil || !*req.All {
			return nil, false, badRequest(`"all" must be true; to replay some messages send "message_ids"`)
		}
		return nil, true, nil
	case !present["message_ids"]:
		return nil, false, badRequest(`send {"message_ids": [...]} or {"all": true}`)
	}

	if len(req.MessageIDs) == 0 || len(req.MessageIDs) > maxReplayIDs {
		return nil, false, badRequest(`"message_ids" must have 1 to %d ids, got %d`, maxReplayIDs, len(req.MessageIDs))
	}
	seen := make(map[string]bool, len(req.MessageIDs))
	ids := make([]string, 0, len(req.MessageIDs))
	for i, id := range req.MessageIDs {
		if err := checkMessageID(id); err != nil {
			return nil, false, badRequest("message_ids[%d]: %s", i, err.Error())
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	return ids, false, nil
}

// toDeadLetterView shows the body as JSON when it is valid UTF-8 JSON, and
// as base64 otherwise. A body over MaxPayloadBytes is cut to that size and
// always shown as base64.
func (h *handler) toDeadLetterView(d transport.DeadLetter) deadLetterView {
	v := deadLetterView{
		MessageID:    d.MessageID,
		Reason:       d.Reason,
		Detail:       d.Detail,
		Attempts:     d.Attempts,
		PayloadBytes: len(d.Body),
	}
	if !d.PublishedAt.IsZero() {
		at := d.PublishedAt.UTC()
		v.PublishedAt = &at
	}

	body := d.Body
	if len(body) > h.cfg.MaxPayloadBytes {
		body, v.PayloadTruncated = body[:h.cfg.MaxPayloadBytes], true
	}
	if !v.PayloadTruncated && utf8.Valid(body) && json.Valid(body) {
		v.Payload = json.RawMessage(body)
		return v
	}
	encoded := base64.StdEncoding.EncodeToString(body)
	v.PayloadBase64 = &encoded
	return v
}
