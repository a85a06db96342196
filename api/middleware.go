package api

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// unmatchedRoute labels requests that match no route, so that scanners
// cannot create a metric series per URL.
const unmatchedRoute = "unmatched"

type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newHTTPMetrics(reg prometheus.Registerer) (*httpMetrics, error) {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "messaging_http_requests_total",
			Help: "HTTP requests by route template, method and status code.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "messaging_http_request_duration_seconds",
			Help:    "HTTP request duration in seconds by route template and method.",
			Buckets: prometheus.DefBuckets,
		}, []string{"route", "method"}),
	}
	if err := reg.Register(m.requests); err != nil {
		return nil, fmt.Errorf("registering messaging_http_requests_total: %w", err)
	}
	if err := reg.Register(m.duration); err != nil {
		return nil, fmt.Errorf("registering messaging_http_request_duration_seconds: %w", err)
	}
	return m, nil
}

// methodLabel maps methods outside the standard set to "other", so that
// arbitrary method names cannot create metric series.
func methodLabel(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return method
	default:
		return "other"
	}
}

type routeKey struct{}

// requestState carries the matched route template from the router back to
// the middleware.
type requestState struct {
	route string
}

func setRoute(ctx context.Context, route string) {
	if s, ok := ctx.Value(routeKey{}).(*requestState); ok {
		s.route = route
	}
}

// statusRecorder remembers the status and size of a response.
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (s *statusRecorder) WriteHeader(status int) {
	if s.status == 0 {
		s.status = status
	}
	s.ResponseWriter.WriteHeader(status)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(b)
	s.bytes += n
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// wrap adds a timeout, panic recovery, metrics and the request log around
// next.
func (h *handler) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		state := &requestState{route: unmatchedRoute}
		rec := &statusRecorder{ResponseWriter: w}
		ctx, cancel := context.WithTimeout(context.WithValue(r.Context(), routeKey{}, state), requestTimeout)
		defer cancel()
		r = r.WithContext(ctx)

		// Deferred calls run last-in first-out: recovery writes the 500
		// before observe records it.
		defer h.observe(rec, r, state, start)
		defer h.recoverPanic(rec, r, state)

		if r.URL.Path == "" || r.URL.Path[0] != '/' {
			writeProblem(rec, http.StatusNotFound, "the request target must be an absolute path")
			return
		}
		next.ServeHTTP(rec, r)
	})
}

// recoverPanic turns a handler panic into a 500 and logs its stack. The
// response never contains the panic value or the stack.
func (h *handler) recoverPanic(rec *statusRecorder, r *http.Request, state *requestState) {
	v := recover()
	if v == nil {
		return
	}
	if v == http.ErrAbortHandler {
		panic(v)
	}

	h.logger.ErrorContext(r.Context(), "api: handler panicked",
		"method", r.Method, "route", state.route, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	if rec.status == 0 {
		writeProblem(rec, http.StatusInternalServerError, "internal error")
	}
}

// observe records the request's metrics and logs it at debug level. The log
// line never contains headers, so tokens never reach the log.
func (h *handler) observe(rec *statusRecorder, r *http.Request, state *requestState, start time.Time) {
	elapsed := time.Since(start)
	status := rec.status
	if status == 0 {
		status = http.StatusOK
	}
	method := methodLabel(r.Method)

	h.metrics.requests.WithLabelValues(state.route, method, strconv.Itoa(status)).Inc()
	h.metrics.duration.WithLabelValues(state.route, method).Observe(elapsed.Seconds())
	h.logger.LogAttrs(r.Context(), slog.LevelDebug, "api: request",
		slog.String("method", method),
		slog.String("route", state.route),
		slog.Int("status", status),
		slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000),
		slog.Int("bytes", rec.bytes),
	)
}
