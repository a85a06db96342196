package api

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/julienschmidt/httprouter"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// maxCheckErrorBytes bounds the error text /ready shows per check.
const maxCheckErrorBytes = 300

func (h *handler) health(w http.ResponseWriter, _ *http.Request, _ httprouter.Params, _ string) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

type readinessReport struct {
	Status string            `json:"status"`
	Failed map[string]string `json:"failed,omitempty"`
}

// readiness runs every check at once, under one readinessTimeout deadline.
// It returns 200 {"status":"ready"} or 503 with the error of each failed
// check. The 503 body is this report, not a problem document, so that
// monitors parse one JSON shape for both outcomes.
func (h *handler) readiness(w http.ResponseWriter, r *http.Request, _ httprouter.Params, _ string) {
	failed := h.runChecks(r.Context())
	if len(failed) == 0 {
		writeJSON(w, http.StatusOK, readinessReport{Status: "ready"})
		return
	}
	for name, msg := range failed {
		h.logger.WarnContext(r.Context(), "api: readiness check failed", "check", name, "err", msg)
	}
	writeJSON(w, http.StatusServiceUnavailable, readinessReport{Status: "unavailable", Failed: failed})
}

type checkResult struct {
	name string
	err  error
}

func (h *handler) runChecks(ctx context.Context) map[string]string {
	ctx, cancel := context.WithTimeout(ctx, readinessTimeout)
	defer cancel()

	// The buffer lets a check that ignores its context finish later
	// without blocking.
	results := make(chan checkResult, len(h.ready))
	for _, c := range h.ready {
		go func() {
			results <- checkResult{name: c.Name, err: runCheck(ctx, c)}
		}()
	}

	failed := map[string]string{}
	pending := make(map[string]bool, len(h.ready))
	for _, c := range h.ready {
		pending[c.Name] = true
	}
	for len(pending) > 0 {
		select {
		case res := <-results:
			delete(pending, res.name)
			if res.err != nil {
				failed[res.name] = truncate(res.err.Error(), maxCheckErrorBytes)
			}
		case <-ctx.Done():
			for name := range pending {
				failed[name] = fmt.Sprintf("check did not finish within %s", readinessTimeout)
			}
			return failed
		}
	}
	return failed
}

// runCheck runs one check and turns a panic into an error.
func runCheck(ctx context.Context, c ReadinessCheck) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("check panicked: %v", v)
		}
	}()
	return c.Check(ctx)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func (h *handler) metricsHandler(gatherer prometheus.Gatherer) authedHandle {
	served := promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{
		ErrorLog:            promLogger{h},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	})
	return func(w http.ResponseWriter, r *http.Request, _ httprouter.Params, _ string) {
		served.ServeHTTP(w, r)
	}
}

// promLogger routes promhttp's errors into the handler's logger.
type promLogger struct{ h *handler }

func (l promLogger) Println(v ...any) {
	l.h.logger.Error("api: serving metrics failed", "err", fmt.Sprint(v...))
}
