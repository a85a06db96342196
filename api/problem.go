package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/go-messaging-system/messaging/persistence"
	"github.com/go-messaging-system/messaging/transport"
)

// problem is an RFC 9457 problem document.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

const (
	problemContentType = "application/problem+json"
	// retryAfterSeconds is the Retry-After header value of 503 responses.
	retryAfterSeconds = "5"
)

// writeProblem writes an error response. detail is shown to the client, so
// it must not contain internal error text.
func writeProblem(w http.ResponseWriter, status int, detail string) {
	body, err := encodeJSON(problem{
		Type:   "about:blank",
		Title:  http.StatusText(status),
		Status: status,
		Detail: detail,
	})
	if err != nil {
		body = []byte(`{"type":"about:blank","title":"Internal Server Error","status":500,"detail":"encoding the error failed"}` + "\n")
		status = http.StatusInternalServerError
	}
	writeBody(w, status, problemContentType, body)
}

// writeJSON writes v as the JSON response body.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := encodeJSON(v)
	if err != nil {
		writeProblem(w, http.StatusInternalServerError, "encoding the response failed")
		return
	}
	writeBody(w, status, "application/json", body)
}

// encodeJSON encodes v followed by a newline. Unlike json.Marshal it keeps
// <, > and & as they are instead of writing \u003c and so on, so strings in
// payloads come back as they were stored.
func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writeBody(w http.ResponseWriter, status int, contentType string, body []byte) {
	header := w.Header()
	header.Set("Content-Type", contentType)
	header.Set("Content-Length", strconv.Itoa(len(body)))
	header.Set("X-Content-Type-Options", "nosniff")
	header.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// tenantNotFound writes the one response for a tenant the caller may not
// see, whether or not it exists.
func tenantNotFound(w http.ResponseWriter) {
	writeProblem(w, http.StatusNotFound, "tenant not found")
}

// writeBackendError writes the response for an error from Tenants,
// Publisher or Messages. It logs broker, timeout and internal errors at
// most once per second for each kind and operation.
func (h *handler) writeBackendError(w http.ResponseWriter, r *http.Request, op string, err error) {
	ctx := r.Context()
	switch {
	case errors.Is(err, persistence.ErrTenantNotFound):
		tenantNotFound(w)
	case errors.Is(err, ErrTenantDeleting):
		// Routes reach this only for a tenant the caller may see, so a
		// tenant token learns nothing about other tenants from it.
		w.Header().Set("Retry-After", retryAfterSeconds)
		writeProblem(w, http.StatusServiceUnavailable,
			"the tenant is being deleted and is unavailable until the delete ends; retry later")
	case errors.Is(err, transport.ErrQueueNotFound):
		writeProblem(w, http.StatusNotFound, "the tenant's queue does not exist on the broker")
	case errors.Is(err, persistence.ErrTenantExists):
		writeProblem(w, http.StatusConflict,
			"a tenant with this id already exists; GET it to check whether an earlier create of yours made it")
	case errors.Is(err, ErrShuttingDown):
		w.Header().Set("Retry-After", retryAfterSeconds)
		writeProblem(w, http.StatusServiceUnavailable, "the server is shutting down; retry later")
	case errors.Is(err, ErrChangeNotApplied):
		h.errorLog.log(ctx, h.logger, slog.LevelWarn, "api: tenant change timed out before it was applied", op, "err", err)
		w.Header().Set("Retry-After", retryAfterSeconds)
		writeProblem(w, http.StatusServiceUnavailable,
			"the change timed out behind other tenant changes and was not applied; retry later")
	case errors.Is(err, ErrChangeMaybeApplied):
		h.errorLog.log(ctx, h.logger, slog.LevelWarn, "api: tenant change timed out while being applied", op, "err", err)
		w.Header().Set("Retry-After", retryAfterSeconds)
		writeProblem(w, http.StatusServiceUnavailable,
			"the change timed out while it was being applied and may still take effect; "+
				"GET the tenant to see its state before retrying")
	case errors.Is(err, transport.ErrUnavailable):
		h.errorLog.log(ctx, h.logger, slog.LevelWarn, "api: broker unavailable", op, "err", err)
		w.Header().Set("Retry-After", retryAfterSeconds)
		writeProblem(w, http.StatusServiceUnavailable, "the message broker is unavailable; retry later")
	case errors.Is(ctx.Err(), context.Canceled):
		// The client went away: the status is for the log and the metrics.
		h.logger.DebugContext(ctx, "api: request canceled", "op", op, "err", err)
		writeProblem(w, http.StatusServiceUnavailable, "the request was canceled")
	case persistence.IsRetryable(err):
		// A lost or restarting database: nothing was published or changed
		// that a retry could duplicate beyond what message_id prevents.
		h.errorLog.log(ctx, h.logger, slog.LevelWarn, "api: database unavailable", op, "err", err)
		w.Header().Set("Retry-After", retryAfterSeconds)
		writeProblem(w, http.StatusServiceUnavailable, "the database is unavailable; retry later")
	case errors.Is(err, context.DeadlineExceeded):
		h.errorLog.log(ctx, h.logger, slog.LevelWarn, "api: backend timed out", op, "err", err)
		w.Header().Set("Retry-After", retryAfterSeconds)
		writeProblem(w, http.StatusServiceUnavailable, "the request timed out; retry later")
	default:
		h.errorLog.log(ctx, h.logger, slog.LevelError, "api: request failed", op, "err", err)
		writeProblem(w, http.StatusInternalServerError, "internal error while trying to "+op)
	}
}
