package api

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// Callers of the access matrix. "own" is the token of tenant alpha, whose
// data every path names; "other" is the token of tenant beta.
const (
	callerNone      = "no token"
	callerMalformed = "malformed header"
	callerAdmin     = "admin"
	callerOwn       = "own tenant"
	callerOther     = "other tenant"
)

func TestRouteAccessMatrix(t *testing.T) {
	t.Parallel()
	callers := []string{callerNone, callerMalformed, callerAdmin, callerOwn, callerOther}
	routes := []struct {
		method string
		path   string
		body   string
		want   []int // per caller, in the order of callers
	}{
		{http.MethodPost, "/api/v1/tenants", `{"name": "Gamma"}`,
			[]int{401, 401, 201, 403, 403}},
		{http.MethodGet, "/api/v1/tenants", "",
			[]int{401, 401, 200, 403, 403}},
		{http.MethodGet, "/api/v1/tenants/alpha", "",
			[]int{401, 401, 200, 200, 404}},
		{http.MethodPut, "/api/v1/tenants/alpha/config/concurrency", `{"worker_count": 5}`,
			[]int{401, 401, 200, 403, 403}},
		{http.MethodDelete, "/api/v1/tenants/alpha", "",
			[]int{401, 401, 204, 403, 403}},
		{http.MethodGet, "/api/v1/tenants/alpha/messages", "",
			[]int{401, 401, 200, 200, 404}},
		{http.MethodPost, "/api/v1/messages", `{"payload": {"a": 1}}`,
			[]int{401, 401, 403, 202, 202}},
		{http.MethodGet, "/api/v1/messages", "",
			[]int{401, 401, 403, 200, 200}},
		{http.MethodGet, "/health", "", []int{200, 200, 200, 200, 200}},
		{http.MethodGet, "/ready", "", []int{200, 200, 200, 200, 200}},
		{http.MethodGet, "/metrics", "", []int{200, 200, 200, 200, 200}},
	}
	for _, rt := range routes {
		for i, caller := range callers {
			t.Run(rt.method+" "+rt.path+" "+caller, func(t *testing.T) {
				t.Parallel()
				env := setup(t)
				req := request{method: rt.method, path: rt.path, body: rt.body}
				switch caller {
				case callerMalformed:
					req.auth = "Bearer not.a.jwt"
				case callerAdmin:
					req.token = adminToken(t)
				case callerOwn:
					req.token = tenantToken(t, "alpha")
				case callerOther:
					req.token = tenantToken(t, "beta")
				}

				rec := env.do(t, req)
				require.Equal(t, rt.want[i], rec.Code, "body: %s", rec.Body.String())
				if rec.Code >= 400 {
					requireProblem(t, rec, rt.want[i], "")
				}
				if rec.Code == http.StatusUnauthorized {
					require.Contains(t, rec.Header().Get("WWW-Authenticate"), "Bearer")
				}
			})
		}
	}
}

// A tenant must not learn whether another tenant exists: the response for an
// existing other tenant, for an unknown tenant and for an invalid id must
// be byte for byte the same.
func TestOtherTenantLooksLikeUnknownTenant(t *testing.T) {
	t.Parallel()
	env := setup(t)
	token := tenantToken(t, "alpha")
	paths := []string{
		"/api/v1/tenants/beta",
		"/api/v1/tenants/ghost",
		"/api/v1/tenants/NOT_VALID",
		"/api/v1/tenants/beta/messages",
		"/api/v1/tenants/ghost/messages",
		"/api/v1/tenants/beta/messages?limit=5",
		"/api/v1/tenants/ghost/messages?cursor=bogus",
	}

	var first string
	for _, path := range paths {
		rec := env.do(t, request{method: http.MethodGet, path: path, token: token})
		requireProblem(t, rec, http.StatusNotFound, "tenant not found")
		if first == "" {
			first = rec.Body.String()
		}
		require.Equal(t, first, rec.Body.String(), path)
	}

	admin := env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants/ghost", token: adminToken(t)})
	require.Equal(t, first, admin.Body.String())
}

func TestTenantOfDeletedTenantTokenGets404(t *testing.T) {
	t.Parallel()
	env := setup(t)
	token := tenantToken(t, "alpha")
	rec := env.do(t, request{method: http.MethodDelete, path: "/api/v1/tenants/alpha", token: adminToken(t)})
	require.Equal(t, http.StatusNoContent, rec.Code)

	rec = env.do(t, request{method: http.MethodPost, path: "/api/v1/messages", token: token, body: `{"payload": 1}`})
	requireProblem(t, rec, http.StatusNotFound, "tenant not found")
	require.Zero(t, env.pub.calls)

	rec = env.do(t, request{method: http.MethodGet, path: "/api/v1/messages", token: token})
	requireProblem(t, rec, http.StatusNotFound, "tenant not found")
}
