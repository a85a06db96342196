package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/julienschmidt/httprouter"

	"github.com/go-messaging-system/messaging/persistence"
	"github.com/go-messaging-system/messaging/transport"
)

// publishItem is one message of a publish request, and the whole request
// when it publishes a single message.
type publishItem struct {
	Payload   json.RawMessage `json:"payload"`
	MessageID *string         `json:"message_id"`
}

// publishRequest is the union of both publish shapes, used only to name the
// allowed members.
type publishRequest struct {
	Payload   json.RawMessage   `json:"payload"`
	MessageID *string           `json:"message_id"`
	Messages  []json.RawMessage `json:"messages"`
}

type publishResponse struct {
	Accepted   int      `json:"accepted"`
	MessageIDs []string `json:"message_ids"`
}

type storedMessage struct {
	ID          int64           `json:"id"`
	MessageID   string          `json:"message_id"`
	Payload     json.RawMessage `json:"payload"`
	PublishedAt time.Time       `json:"published_at"`
	StoredAt    time.Time       `json:"stored_at"`
}

type messagePage struct {
	Messages   []storedMessage `json:"messages"`
	NextCursor string          `json:"next_cursor"`
	HasMore    bool            `json:"has_more"`
}

func (h *handler) publishMessages(w http.ResponseWriter, r *http.Request, _ httprouter.Params, tenantID string) {
	data, err := readJSONBody(w, r, h.cfg.MaxBodyBytes)
	if err != nil {
		writeRequestError(w, err)
		return
	}
	maxMessages := h.limiter.maxMessages(h.cfg.MaxBatchMessages)
	msgs, err := decodePublishBody(data, h.cfg.MaxPayloadBytes, maxMessages)
	if err != nil {
		writeRequestError(w, err)
		return
	}

	// The tenant of a valid token may have been deleted since the token was
	// signed. Publishing for it would drop the messages in the exchange,
	// because no queue is bound to its routing key.
	if _, err := h.tenants.Get(r.Context(), tenantID); err != nil {
		h.writeBackendError(w, r, "look up the tenant", err)
		return
	}
	if wait := h.limiter.take(tenantID, len(msgs), time.Now()); wait > 0 {
		writeRateLimited(w, len(msgs), wait)
		return
	}

	now := time.Now().UTC()
	ids := make([]string, len(msgs))
	for i := range msgs {
		msgs[i].PublishedAt = now
		ids[i] = msgs[i].MessageID
	}
	// NOTE: a tenant deleted between the lookup above and this call loses
	// these messages although the broker confirms them.
	if err := h.pub.Publish(r.Context(), tenantID, msgs); err != nil {
		h.writeBackendError(w, r, "publish the messages", err)
		return
	}
	h.logger.DebugContext(r.Context(), "api: messages published", "tenant_id", tenantID, "count", len(msgs))
	writeJSON(w, http.StatusAccepted, publishResponse{Accepted: len(msgs), MessageIDs: ids})
}

// decodePublishBody parses a publish request: {"payload": ..., "message_id":
// ...} or {"messages": [{"payload": ..., "message_id": ...}, ...]}. It
// compacts and checks every payload, gives a generated message id to each
// message without one, and rejects a message id used twice. Every error is
// a 400: more than maxMessages messages, a payload over maxPayloadBytes as
// stored, or a message id over maxMessageIDBytes. PublishedAt is left for
// the caller.
func decodePublishBody(data []byte, maxPayloadBytes, maxMessages int) ([]transport.OutgoingMessage, error) {
	var req publishRequest
	present, err := checkMembers(data, jsonNames(&req))
	if err != nil {
		return nil, err
	}

	if !present["messages"] {
		msg, err := decodePublishItem(data, maxPayloadBytes)
		if err != nil {
			return nil, err
		}
		return []transport.OutgoingMessage{msg}, nil
	}
	if present["payload"] || present["message_id"] {
		return nil, badRequest(`send either "payload" with an optional "message_id", or "messages", not both`)
	}
	if _, err := decodeObject(data, &req); err != nil {
		return nil, err
	}
	return decodeBatch(req.Messages, maxPayloadBytes, maxMessages)
}

func decodeBatch(items []json.RawMessage, maxPayloadBytes, maxMessages int) ([]transport.OutgoingMessage, error) {
	switch {
	case len(items) == 0:
		return nil, badRequest(`"messages" must be a non-empty array`)
	case len(items) > maxMessages:
		return nil, badRequest(`"messages" has %d messages, the maximum is %d per request`, len(items), maxMessages)
	}

	msgs := make([]transport.OutgoingMessage, len(items))
	seen := make(map[string]int, len(items))
	for i, item := range items {
		msg, err := decodePublishItem(item, maxPayloadBytes)
		if err != nil {
			return nil, prefixError(fmt.Sprintf("messages[%d]: ", i), err)
		}
		if first, ok := seen[msg.MessageID]; ok {
			return nil, badRequest("messages[%d]: message_id %q is already used by messages[%d]",
				i, truncate(msg.MessageID, maxNameInError), first)
		}
		seen[msg.MessageID] = i
		msgs[i] = msg
	}
	return msgs, nil
}

func decodePublishItem(data []byte, maxPayloadBytes int) (transport.OutgoingMessage, error) {
	var item publishItem
	present, err := decodeObject(data, &item)
	if err != nil {
		return transport.OutgoingMessage{}, err
	}
	if !present["payload"] {
		return transport.OutgoingMessage{}, badRequest(`"payload" is required; send {"payload": <any JSON>} or {"messages": [...]}`)
	}
	payload, err := preparePayload(item.Payload, maxPayloadBytes)
	if err != nil {
		return transport.OutgoingMessage{}, prefixError("", err)
	}

	id := newMessageID()
	if item.MessageID != nil {
		id = *item.MessageID
		if err := checkMessageID(id); err != nil {
			return transport.OutgoingMessage{}, badRequest("%s", err.Error())
		}
	}
	return transport.OutgoingMessage{MessageID: id, Body: payload}, nil
}

// prefixError puts prefix in front of err's message and keeps its status.
func prefixError(prefix string, err error) error {
	status := http.StatusBadRequest
	if re, ok := err.(*requestError); ok {
		status = re.status
	}
	return &requestError{status: status, detail: prefix + err.Error()}
}

func (h *handler) listMessages(w http.ResponseWriter, r *http.Request, _ httprouter.Params, tenantID string) {
	if !validTenantID(tenantID) {
		tenantNotFound(w)
		return
	}
	after, limit, err := h.parsePageQuery(r.URL.RawQuery, tenantID)
	if err != nil {
		writeRequestError(w, err)
		return
	}
	if _, err := h.tenants.Get(r.Context(), tenantID); err != nil {
		h.writeBackendError(w, r, "look up the tenant", err)
		return
	}

	page, err := h.msgs.ListMessages(r.Context(), tenantID, after, limit)
	if err != nil {
		h.writeBackendError(w, r, "list messages", err)
		return
	}
	writeJSON(w, http.StatusOK, h.toMessagePage(tenantID, after, page))
}

func (h *handler) toMessagePage(tenantID string, after persistence.Position, page persistence.Page) messagePage {
	out := messagePage{Messages: make([]storedMessage, len(page.Messages)), HasMore: page.HasMore}
	for i, m := range page.Messages {
		out.Messages[i] = storedMessage{
			ID:          m.ID,
			MessageID:   m.MessageID,
			Payload:     m.Payload,
			PublishedAt: m.PublishedAt,
			StoredAt:    m.StoredAt,
		}
	}
	next := page.Next
	if len(page.Messages) == 0 {
		next = after
	}
	out.NextCursor = h.cursors.encode(tenantID, next)
	return out
}

// parsePageQuery parses the cursor and limit query parameters strictly:
// each at most once, limit only as decimal digits in 1..1000.
func (h *handler) parsePageQuery(rawQuery, tenantID string) (persistence.Position, int, error) {
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return persistence.Position{}, 0, badRequest("invalid query string: %v", err)
	}
	for name, values := range query {
		if name != "cursor" && name != "limit" {
			return persistence.Position{}, 0, badRequest("unknown query parameter %q; use cursor and limit",
				truncate(name, maxNameInError))
		}
		if len(values) > 1 {
			return persistence.Position{}, 0, badRequest("query parameter %q appears more than once", name)
		}
	}

	limit := defaultLimit
	if values, ok := query["limit"]; ok {
		if limit, err = parseLimitUpTo(values[0], maxLimit); err != nil {
			return persistence.Position{}, 0, err
		}
	}
	after, err := h.cursors.decode(tenantID, query.Get("cursor"))
	if err != nil {
		return persistence.Position{}, 0, badRequest("%s", err.Error())
	}
	return after, limit, nil
}

// parseLimitUpTo parses a limit query value: decimal digits only, 1..most.
func parseLimitUpTo(s string, most int) (int, error) {
	invalid := badRequest("limit must be an integer from 1 to %d, got %q", most, truncate(s, maxNameInError))
	if s == "" || len(s) > len(strconv.Itoa(most)) {
		return 0, invalid
	}
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return 0, invalid
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > most {
		return 0, invalid
	}
	return n, nil
}
