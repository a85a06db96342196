package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/transport"
)

// loadOpenAPI parses and validates the embedded document and returns a
// router over it.
func loadOpenAPI(t *testing.T) (*openapi3.T, routers.Router) {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(openAPIDocument)
	require.NoError(t, err)
	require.NoError(t, doc.Validate(context.Background()))
	router, err := gorillamux.NewRouter(doc)
	require.NoError(t, err)
	return doc, router
}

var (
	errBoom = errors.New("boom: internal detail")
	errDown = fmt.Errorf("dial: %w", transport.ErrUnavailable)
)

// faults of a conformance case, applied to the fakes before the request.
type fault int

const (
	noFault fault = iota
	tenantsFail
	tenantsDown
	tenantsDeleting
	tenantsNotApplied
	tenantsMaybeApplied
	publisherFail
	publisherDown
	publisherDeleting
	messagesFail
	messagesDown
	deadLettersFail
	deadLettersDown
	noDeadLetters
	checksFail
	rateLimited
)

type conformanceCase struct {
	name  string
	req   request
	fault fault
	want  int
	// invalid marks requests that break the document on purpose, so only
	// their responses are checked.
	invalid bool
}

func conformanceCases(t *testing.T) []conformanceCase {
	admin, alpha, ghost := adminToken(t), tenantToken(t, "alpha"), tenantToken(t, "ghost")
	get := func(path, token string) request { return request{method: http.MethodGet, path: path, token: token} }
	send := func(method, path, token, body string) request {
		return request{method: method, path: path, token: token, body: body}
	}
	const (
		tenants  = "/api/v1/tenants"
		tenant   = "/api/v1/tenants/alpha"
		resize   = "/api/v1/tenants/alpha/config/concurrency"
		tmsgs    = "/api/v1/tenants/alpha/messages"
		dls      = "/api/v1/tenants/alpha/dead-letters"
		replay   = "/api/v1/tenants/alpha/dead-letters/replay"
		messages = "/api/v1/messages"
	)
	huge := `{"name": "` + strings.Repeat("a", 5000) + `"}`
	return []conformanceCase{
		{name: "create", req: send("POST", tenants, admin, `{"name": "Gamma", "worker_count": 2, "id": "gamma"}`), want: 201},
		{name: "create generated id", req: send("POST", tenants, admin, `{"name": "Gamma"}`), want: 201},
		{name: "create invalid", req: send("POST", tenants, admin, `{"name": ""}`), want: 400, invalid: true},
		{name: "create no token", req: send("POST", tenants, "", `{"name": "x"}`), want: 401},
		{name: "create tenant token", req: send("POST", tenants, alpha, `{"name": "x"}`), want: 403},
		{name: "create taken id", req: send("POST", tenants, admin, `{"name": "x", "id": "alpha"}`), want: 409},
		{name: "create huge", req: send("POST", tenants, admin, huge), want: 413, invalid: true},
		{name: "create text", req: request{method: "POST", path: tenants, token: admin, body: `{"name": "x"}`,
			contentType: "text/plain"}, want: 415, invalid: true},
		{name: "create fails", req: send("POST", tenants, admin, `{"name": "x"}`), fault: tenantsFail, want: 500},
		{name: "create down", req: send("POST", tenants, admin, `{"name": "x"}`), fault: tenantsDown, want: 503},
		{name: "create not applied", req: send("POST", tenants, admin, `{"name": "x"}`), fault: tenantsNotApplied, want: 503},
		{name: "create maybe applied", req: send("POST", tenants, admin, `{"name": "x"}`), fault: tenantsMaybeApplied, want: 503},

		{name: "list tenants", req: get(tenants, admin), want: 200},
		{name: "list tenants no token", req: get(tenants, ""), want: 401},
		{name: "list tenants bad token", req: get(tenants, "a.b.c"), want: 401},
		{name: "list tenants tenant token", req: get(tenants, alpha), want: 403},
		{name: "list tenants fails", req: get(tenants, admin), fault: tenantsFail, want: 500},
		{name: "list tenants down", req: get(tenants, admin), fault: tenantsDown, want: 503},

		{name: "get tenant", req: get(tenant, admin), want: 200},
		{name: "get own tenant", req: get(tenant, alpha), want: 200},
		{name: "get tenant no token", req: get(tenant, ""), want: 401},
		{name: "get other tenant", req: get("/api/v1/tenants/beta", tenantToken(t, "gamma")), want: 404},
		{name: "get unknown tenant", req: get("/api/v1/tenants/ghost", admin), want: 404},
		{name: "get tenant fails", req: get(tenant, admin), fault: tenantsFail, want: 500},
		{name: "get tenant down", req: get(tenant, admin), fault: tenantsDown, want: 503},

		{name: "delete", req: send("DELETE", tenant, admin, ""), want: 204},
		{name: "delete no token", req: send("DELETE", tenant, "", ""), want: 401},
		{name: "delete tenant token", req: send("DELETE", tenant, alpha, ""), want: 403},
		{name: "delete unknown", req: send("DELETE", "/api/v1/tenants/ghost", admin, ""), want: 404},
		{name: "delete fails", req: send("DELETE", tenant, admin, ""), fault: tenantsFail, want: 500},
		{name: "delete down", req: send("DELETE", tenant, admin, ""), fault: tenantsDown, want: 503},
		{name: "delete while deleting", req: send("DELETE", tenant, admin, ""), fault: tenantsDeleting, want: 503},
		{name: "delete not applied", req: send("DELETE", tenant, admin, ""), fault: tenantsNotApplied, want: 503},
		{name: "delete maybe applied", req: send("DELETE", tenant, admin, ""), fault: tenantsMaybeApplied, want: 503},

		{name: "resize", req: send("PUT", resize, admin, `{"worker_count": 4}`), want: 200},
		{name: "resize invalid", req: send("PUT", resize, admin, `{"worker_count": 0}`), want: 400, invalid: true},
		{name: "resize no token", req: send("PUT", resize, "", `{"worker_count": 4}`), want: 401},
		{name: "resize tenant token", req: send("PUT", resize, alpha, `{"worker_count": 4}`), want: 403},
		{name: "resize unknown", req: send("PUT", "/api/v1/tenants/ghost/config/concurrency", admin, `{"worker_count": 4}`), want: 404},
		{name: "resize huge", req: send("PUT", resize, admin, huge), want: 413, invalid: true},
		{name: "resize text", req: request{method: "PUT", path: resize, token: admin, body: `{"worker_count": 4}`,
			contentType: "text/plain"}, want: 415, invalid: true},
		{name: "resize fails", req: send("PUT", resize, admin, `{"worker_count": 4}`), fault: tenantsFail, want: 500},
		{name: "resize down", req: send("PUT", resize, admin, `{"worker_count": 4}`), fault: tenantsDown, want: 503},
		{name: "resize while deleting", req: send("PUT", resize, admin, `{"worker_count": 4}`), fault: tenantsDeleting, want: 503},
		{name: "resize not applied", req: send("PUT", resize, admin, `{"worker_count": 4}`), fault: tenantsNotApplied, want: 503},
		{name: "resize maybe applied", req: send("PUT", resize, admin, `{"worker_count": 4}`), fault: tenantsMaybeApplied, want: 503},

		{name: "tenant messages", req: get(tmsgs+"?limit=2", admin), want: 200},
		{name: "tenant messages own", req: get(tmsgs, alpha), want: 200},
		{name: "tenant messages bad limit", req: get(tmsgs+"?limit=0", admin), want: 400, invalid: true},
		{name: "tenant messages bad cursor", req: get(tmsgs+"?cursor=abc", admin), want: 400},
		{name: "tenant messages no token", req: get(tmsgs, ""), want: 401},
		{name: "tenant messages other tenant", req: get(tmsgs, tenantToken(t, "beta")), want: 404},
		{name: "tenant messages fails", req: get(tmsgs, admin), fault: messagesFail, want: 500},
		{name: "tenant messages down", req: get(tmsgs, admin), fault: messagesDown, want: 503},

		{name: "publish one", req: send("POST", messages, alpha, `{"payload": {"a": 1}, "message_id": "m-1"}`), want: 202},
		{name: "publish batch", req: send("POST", messages, alpha, `{"messages": [{"payload": null}, {"payload": "x"}]}`), want: 202},
		{name: "publish invalid", req: send("POST", messages, alpha, `{"payload": 1, "messages": []}`), want: 400, invalid: true},
		{name: "publish no token", req: send("POST", messages, "", `{"payload": 1}`), want: 401},
		{name: "publish admin token", req: send("POST", messages, admin, `{"payload": 1}`), want: 403},
		{name: "publish deleted tenant", req: send("POST", messages, ghost, `{"payload": 1}`), want: 404},
		{name: "publish huge", req: send("POST", messages, alpha, `{"payload": "`+strings.Repeat("a", 5000)+`"}`), want: 413, invalid: true},
		{name: "publish text", req: request{method: "POST", path: messages, token: alpha, body: `{"payload": 1}`,
			contentType: "text/plain"}, want: 415, invalid: true},
		{name: "publish rate limited", req: send("POST", messages, alpha, `{"payload": 1}`), fault: rateLimited, want: 429},
		{name: "publish fails", req: send("POST", messages, alpha, `{"payload": 1}`), fault: publisherFail, want: 500},
		{name: "publish down", req: send("POST", messages, alpha, `{"payload": 1}`), fault: publisherDown, want: 503},
		{name: "publish while deleting", req: send("POST", messages, alpha, `{"payload": 1}`), fault: publisherDeleting, want: 503},

		{name: "messages", req: get(messages+"?limit=1000", alpha), want: 200},
		{name: "messages bad limit", req: get(messages+"?limit=1001", alpha), want: 400, invalid: true},
		{name: "messages no token", req: get(messages, ""), want: 401},
		{name: "messages admin token", req: get(messages, admin), want: 403},
		{name: "messages deleted tenant", req: get(messages, ghost), want: 404},
		{name: "messages fails", req: get(messages, alpha), fault: messagesFail, want: 500},
		{name: "messages down", req: get(messages, alpha), fault: messagesDown, want: 503},

		{name: "dead letters", req: get(dls+"?limit=100", admin), want: 200},
		{name: "dead letters bad limit", req: get(dls+"?limit=101", admin), want: 400, invalid: true},
		{name: "dead letters no token", req: get(dls, ""), want: 401},
		{name: "dead letters tenant token", req: get(dls, alpha), want: 403},
		{name: "dead letters unknown tenant", req: get("/api/v1/tenants/ghost/dead-letters", admin), want: 404},
		{name: "dead letters fail", req: get(dls, admin), fault: deadLettersFail, want: 500},
		{name: "dead letters not served", req: get(dls, admin), fault: noDeadLetters, want: 501},
		{name: "dead letters down", req: get(dls, admin), fault: deadLettersDown, want: 503},

		{name: "replay ids", req: send("POST", replay, admin, `{"message_ids": ["a", "b"]}`), want: 200},
		{name: "replay all", req: send("POST", replay, admin, `{"all": true}`), want: 200},
		{name: "replay invalid", req: send("POST", replay, admin, `{"all": false}`), want: 400, invalid: true},
		{name: "replay no token", req: send("POST", replay, "", `{"all": true}`), want: 401},
		{name: "replay tenant token", req: send("POST", replay, alpha, `{"all": true}`), want: 403},
		{name: "replay unknown tenant", req: send("POST", "/api/v1/tenants/ghost/dead-letters/replay", admin, `{"all": true}`), want: 404},
		{name: "replay huge", req: send("POST", replay, admin, huge), want: 413, invalid: true},
		{name: "replay text", req: request{method: "POST", path: replay, token: admin, body: `{"all": true}`,
			contentType: "text/plain"}, want: 415, invalid: true},
		{name: "replay fails", req: send("POST", replay, admin, `{"all": true}`), fault: deadLettersFail, want: 500},
		{name: "replay not served", req: send("POST", replay, admin, `{"all": true}`), fault: noDeadLetters, want: 501},
		{name: "replay down", req: send("POST", replay, admin, `{"all": true}`), fault: deadLettersDown, want: 503},

		{name: "openapi", req: get("/api/v1/openapi.json", ""), want: 200},
		{name: "health", req: get("/health", ""), want: 200},
		{name: "ready", req: get("/ready", ""), want: 200},
		{name: "not ready", req: get("/ready", ""), fault: checksFail, want: 503},
		{name: "metrics", req: get("/metrics", ""), want: 200},
	}
}

// conformanceEnv builds the handler for one case, with its fault.
func conformanceEnv(t *testing.T, f fault) *testEnv {
	t.Helper()
	letters := &fakeDeadLetters{letters: []transport.DeadLetter{
		{MessageID: "a", Reason: "invalid_json", Detail: "bad", Attempts: 1, Body: []byte("x")},
		{MessageID: "b", Reason: "rejected", Body: []byte(`{"k": 1}`)},
	}}
	opts := []setupOption{withConfig(func(c *Config) { c.MaxBodyBytes = 4096 })}
	switch f {
	case deadLettersFail:
		letters.err = errBoom
	case deadLettersDown:
		letters.err = errDown
	case checksFail:
		opts = append(opts, withChecks(ReadinessCheck{Name: "database", Check: func(context.Context) error { return errDown }}))
	case rateLimited:
		opts = append(opts, withRateLimit(0.001, 1))
	}
	if f != noDeadLetters {
		opts = append(opts, withOptions(WithDeadLetters(letters)))
	}

	env := setup(t, opts...)
	env.msgs.add("alpha", 3)
	switch f {
	case tenantsFail:
		env.tenants.err = errBoom
	case tenantsDown:
		env.tenants.err = errDown
	case tenantsDeleting:
		env.tenants.err = ErrTenantDeleting
	case tenantsNotApplied:
		env.tenants.err = fmt.Errorf("%w: %w", ErrChangeNotApplied, context.DeadlineExceeded)
	case tenantsMaybeApplied:
		env.tenants.err = fmt.Errorf("%w: %w", ErrChangeMaybeApplied, context.DeadlineExceeded)
	case publisherFail:
		env.pub.err = errBoom
	case publisherDown:
		env.pub.err = errDown
	case publisherDeleting:
		env.pub.err = ErrTenantDeleting
	case messagesFail:
		env.msgs.err = errBoom
	case messagesDown:
		env.msgs.err = errDown
	case rateLimited:
		rec := env.do(t, request{method: http.MethodPost, path: "/api/v1/messages",
			token: tenantToken(t, "alpha"), body: `{"payload": 0}`})
		require.Equal(t, http.StatusAccepted, rec.Code, "the first message fits in the bucket")
	}
	return env
}

// Every route's responses, errors included, match the OpenAPI document:
// status, headers and body. Every status the document lists for an
// operation is produced at least once, and every route of the handler is
// in the document.
func TestResponsesMatchOpenAPI(t *testing.T) {
	t.Parallel()
	doc, router := loadOpenAPI(t)
	seen := map[string]bool{} // "operationId status"

	for _, tc := range conformanceCases(t) {
		env := conformanceEnv(t, tc.fault)
		rec := env.do(t, tc.req)
		require.Equal(t, tc.want, rec.Code, "%s: %s", tc.name, rec.Body.String())

		input := requestInput(t, router, tc.req)
		if !tc.invalid {
			require.NoError(t, openapi3filter.ValidateRequest(t.Context(), input), tc.name)
		}
		err := openapi3filter.ValidateResponse(t.Context(), &openapi3filter.ResponseValidationInput{
			RequestValidationInput: input,
			Status:                 rec.Code,
			Header:                 rec.Header(),
			Body:                   io.NopCloser(bytes.NewReader(rec.Body.Bytes())),
			Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
		})
		require.NoError(t, err, "%s: response %d %s", tc.name, rec.Code, rec.Body.String())
		seen[fmt.Sprintf("%s %d", input.Route.Operation.OperationID, rec.Code)] = true
	}

	var missing []string
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			for status := range op.Responses.Map() {
				if key := op.OperationID + " " + status; !seen[key] {
					missing = append(missing, fmt.Sprintf("%s (%s %s)", key, method, path))
				}
			}
		}
	}
	slices.Sort(missing)
	require.Empty(t, missing, "documented responses that no case produced")
}

// requestInput finds the document's route for req.
func requestInput(t *testing.T, router routers.Router, req request) *openapi3filter.RequestValidationInput {
	t.Helper()
	var body io.Reader
	if req.body != "" {
		body = strings.NewReader(req.body)
	}
	r := httptest.NewRequest(req.method, req.path, body)
	if req.body != "" {
		ct := req.contentType
		if ct == "" {
			ct = "application/json"
		}
		r.Header.Set("Content-Type", ct)
	}
	if req.token != "" {
		r.Header.Set("Authorization", "Bearer "+req.token)
	}
	route, params, err := router.FindRoute(r)
	require.NoError(t, err, "%s %s is not in the OpenAPI document", req.method, req.path)
	return &openapi3filter.RequestValidationInput{
		Request:    r,
		PathParams: params,
		Route:      route,
		Options:    &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc},
	}
}

// The document and the handler have the same routes.
func TestOpenAPIListsEveryRoute(t *testing.T) {
	t.Parallel()
	doc, _ := loadOpenAPI(t)
	h, err := newHandler(Config{JWTSecret: testSecret, DefaultWorkerCount: 3, MaxWorkerCount: 64},
		newFakeTenants(), &fakePublisher{}, &fakeMessages{}, nil, nil, nil, discardLogger())
	require.NoError(t, err)

	var documented []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+strings.ReplaceAll(path, "{id}", ":id"))
		}
	}
	registered := slices.Clone(h.routeList)
	slices.Sort(documented)
	slices.Sort(registered)
	require.Equal(t, registered, documented)
}

func TestOpenAPIIsServed(t *testing.T) {
	t.Parallel()
	env := setup(t)
	rec := env.do(t, request{method: http.MethodGet, path: "/api/v1/openapi.json"})
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	require.Equal(t, openAPIDocument, rec.Body.Bytes())
}
