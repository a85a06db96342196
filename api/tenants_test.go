package api

import (
	"context"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/persistence"
)

func TestCreateTenant(t *testing.T) {
	t.Parallel()
	env := setup(t)
	rec := env.do(t, request{method: http.MethodPost, path: "/api/v1/tenants", token: adminToken(t),
		body: `{"name": "  Tenant One  ", "worker_count": 5, "id": "tenant-one"}`})
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	require.Equal(t, "/api/v1/tenants/tenant-one", rec.Header().Get("Location"))

	tenant := decodeJSON[TenantView](t, rec)
	require.Equal(t, "tenant-one", tenant.ID)
	require.Equal(t, "Tenant One", tenant.Name)
	require.Equal(t, 5, tenant.WorkerCount)
	require.Contains(t, rec.Body.String(), `"workers_running":5`)
	require.Contains(t, rec.Body.String(), `"created_at":`)

	rec = env.do(t, request{method: http.MethodPost, path: "/api/v1/tenants", token: adminToken(t),
		body: `{"name": "Again", "id": "tenant-one"}`})
	requireProblem(t, rec, http.StatusConflict, "already exists")
}

func TestCreateTenantGeneratesID(t *testing.T) {
	t.Parallel()
	env := setup(t)
	cases := []struct {
		name   string
		prefix string
	}{
		{"Tenant One", "tenant-one-"},
		{"ÄÖÜ ☃", "tenant-"},
		{strings.Repeat("Long Name ", 20), "long-name-long-name-long-name-long-name-l"},
	}
	for _, tc := range cases {
		rec := env.do(t, request{method: http.MethodPost, path: "/api/v1/tenants", token: adminToken(t),
			body: `{"name": "` + tc.name + `"}`})
		require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
		tenant := decodeJSON[TenantView](t, rec)
		require.True(t, strings.HasPrefix(tenant.ID, tc.prefix), tenant.ID)
		require.Regexp(t, regexp.MustCompile(tenantIDPattern), tenant.ID)
		require.Equal(t, 3, tenant.WorkerCount, "default worker count")
	}
}

func TestCreateTenantRetriesTakenGeneratedID(t *testing.T) {
	t.Parallel()
	env := setup(t)
	// Every generated id collides: the handler gives up after a few tries.
	collide := &collidingTenants{fakeTenants: env.tenants}
	h, err := NewHandler(env.cfg, collide, env.pub, env.msgs, nil, nil, nil, discardLogger())
	require.NoError(t, err)
	env.handler = h

	rec := env.do(t, request{method: http.MethodPost, path: "/api/v1/tenants", token: adminToken(t),
		body: `{"name": "x"}`})
	requireProblem(t, rec, http.StatusConflict, "already exists")
	require.Equal(t, generatedIDAttempts, collide.calls)
}

func TestCreateTenantValidation(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name        string
		body        string
		contentType string
		status      int
		detail      string
	}{
		{"missing name", `{"worker_count": 2}`, "", 400, "name is required"},
		{"null name", `{"name": null}`, "", 400, "name is required"},
		{"blank name", `{"name": "   "}`, "", 400, "blank"},
		{"name too long", `{"name": "` + strings.Repeat("é", 201) + `"}`, "", 400, "201 characters"},
		{"name at limit", `{"name": "` + strings.Repeat("é", 200) + `"}`, "", 201, ""},
		{"name with newline", `{"name": "a\nb"}`, "", 400, "control"},
		{"name with NUL", `{"name": "a\u0000b"}`, "", 400, "control"},
		{"name with invalid UTF-8", "{\"name\": \"a\xffb\"}", "", 400, "UTF-8"},
		{"name with bidi override", `{"name": "a\u202eb"}`, "", 201, ""},
		{"name not a string", `{"name": 5}`, "", 400, `"name" must be a string`},
		{"worker_count zero", `{"name": "a", "worker_count": 0}`, "", 400, "between 1 and 64"},
		{"worker_count negative", `{"name": "a", "worker_count": -1}`, "", 400, "between 1 and 64"},
		{"worker_count above max", `{"name": "a", "worker_count": 65}`, "", 400, "between 1 and 64"},
		{"worker_count at max", `{"name": "a", "worker_count": 64}`, "", 201, ""},
		{"worker_count fraction", `{"name": "a", "worker_count": 2.5}`, "", 400, "must be an integer"},
		{"worker_count exponent", `{"name": "a", "worker_count": 1e1}`, "", 400, "must be an integer"},
		{"worker_count string", `{"name": "a", "worker_count": "3"}`, "", 400, "must be an integer"},
		{"worker_count huge", `{"name": "a", "worker_count": 99999999999999999999}`, "", 400, "must be an integer"},
		{"worker_count null takes default", `{"name": "a", "worker_count": null}`, "", 201, ""},
		{"invalid id", `{"name": "a", "id": "Bad_ID"}`, "", 400, "id must match"},
		{"empty id", `{"name": "a", "id": ""}`, "", 400, "id must match"},
		{"id too long", `{"name": "a", "id": "` + strings.Repeat("a", 64) + `"}`, "", 400, "id must match"},
		{"id at max length", `{"name": "a", "id": "` + strings.Repeat("a", 63) + `"}`, "", 201, ""},
		{"id with newline", `{"name": "a", "id": "abc\n"}`, "", 400, "id must match"},
		{"unknown field", `{"name": "a", "colour": "red"}`, "", 400, `unknown field "colour"`},
		{"field in other case", `{"Name": "a"}`, "", 400, `unknown field "Name"`},
		{"duplicate field", `{"name": "a", "name": "b"}`, "", 400, `"name" appears more than once`},
		{"trailing garbage", `{"name": "a"} x`, "", 400, "after the JSON object"},
		{"second object", `{"name": "a"}{"name": "b"}`, "", 400, "after the JSON object"},
		{"trailing whitespace is fine", "{\"name\": \"a\"}\n\t ", "", 201, ""},
		{"array body", `[{"name": "a"}]`, "", 400, "must be an object"},
		{"string body", `"a"`, "", 400, "must be an object"},
		{"invalid JSON", `{"name": }`, "", 400, "invalid JSON"},
		{"truncated JSON", `{"name": "a"`, "", 400, "incomplete"},
		{"whitespace body", "   ", "", 400, "empty"},
		{"missing content type", `{"name": "a"}`, "-", 415, "application/json"},
		{"text content type", `{"name": "a"}`, "text/plain", 415, "application/json"},
		{"form content type", `name=a`, "application/x-www-form-urlencoded", 415, "application/json"},
		{"latin1 charset", `{"name": "a"}`, "application/json; charset=latin1", 415, "utf-8"},
		{"broken content type", `{"name": "a"}`, "application/json; ===", 415, "application/json"},
		{"utf-8 charset", `{"name": "a"}`, "application/json; charset=UTF-8", 201, ""},
		{"json suffix media type", `{"name": "a"}`, "application/merge-patch+json", 201, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := setup(t)
			rec := env.do(t, request{method: http.MethodPost, path: "/api/v1/tenants", token: adminToken(t),
				body: tc.body, contentType: tc.contentType})
			if tc.status >= 400 {
				requireProblem(t, rec, tc.status, tc.detail)
				return
			}
			require.Equal(t, tc.status, rec.Code, rec.Body.String())
		})
	}
}

func TestCreateTenantEmptyBody(t *testing.T) {
	t.Parallel()
	env := setup(t)
	r, _ := http.NewRequest(http.MethodPost, "/api/v1/tenants", http.NoBody)
	r.Header.Set("Authorization", "Bearer "+adminToken(t))
	r.Header.Set("Content-Type", "application/json")
	requireProblem(t, newRecorder(env, r), http.StatusBadRequest, "empty")
}

func TestListTenants(t *testing.T) {
	t.Parallel()
	env := setup(t)
	rec := env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants", token: adminToken(t)})
	require.Equal(t, http.StatusOK, rec.Code)
	list := decodeJSON[tenantList](t, rec)
	require.Len(t, list.Tenants, 2)
	require.Equal(t, "alpha", list.Tenants[0].ID)
	require.Equal(t, "beta", list.Tenants[1].ID)

	empty := setup(t)
	empty.tenants.tenants = map[string]TenantView{}
	rec = empty.do(t, request{method: http.MethodGet, path: "/api/v1/tenants", token: adminToken(t)})
	require.JSONEq(t, `{"tenants": []}`, rec.Body.String())
}

func TestResizeTenant(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		path   string
		body   string
		status int
		detail string
	}{
		{"valid", "/api/v1/tenants/alpha/config/concurrency", `{"worker_count": 7}`, 200, ""},
		{"unknown tenant", "/api/v1/tenants/ghost/config/concurrency", `{"worker_count": 7}`, 404, "tenant not found"},
		{"invalid tenant id", "/api/v1/tenants/Ghost!/config/concurrency", `{"worker_count": 7}`, 404, "tenant not found"},
		{"missing worker_count", "/api/v1/tenants/alpha/config/concurrency", `{}`, 400, "worker_count is required"},
		{"null worker_count", "/api/v1/tenants/alpha/config/concurrency", `{"worker_count": null}`, 400, "worker_count is required"},
		{"zero", "/api/v1/tenants/alpha/config/concurrency", `{"worker_count": 0}`, 400, "between 1 and 64"},
		{"too many", "/api/v1/tenants/alpha/config/concurrency", `{"worker_count": 1000}`, 400, "between 1 and 64"},
		{"fraction", "/api/v1/tenants/alpha/config/concurrency", `{"worker_count": 1.5}`, 400, "integer"},
		{"unknown field", "/api/v1/tenants/alpha/config/concurrency", `{"worker_count": 2, "name": "x"}`, 400, `unknown field "name"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := setup(t)
			rec := env.do(t, request{method: http.MethodPut, path: tc.path, token: adminToken(t), body: tc.body})
			if tc.status >= 400 {
				requireProblem(t, rec, tc.status, tc.detail)
				return
			}
			require.Equal(t, tc.status, rec.Code, rec.Body.String())
			require.Equal(t, 7, decodeJSON[TenantView](t, rec).WorkerCount)
		})
	}
}

func TestDeleteTenant(t *testing.T) {
	t.Parallel()
	env := setup(t)
	rec := env.do(t, request{method: http.MethodDelete, path: "/api/v1/tenants/alpha", token: adminToken(t)})
	require.Equal(t, http.StatusNoContent, rec.Code)
	require.Empty(t, rec.Body.String())

	rec = env.do(t, request{method: http.MethodDelete, path: "/api/v1/tenants/alpha", token: adminToken(t)})
	requireProblem(t, rec, http.StatusNotFound, "tenant not found")

	rec = env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants/alpha", token: adminToken(t)})
	requireProblem(t, rec, http.StatusNotFound, "tenant not found")
}

func TestTenantBackendErrorHidesDetail(t *testing.T) {
	t.Parallel()
	env := setup(t)
	env.tenants.err = errors.New("dial tcp 10.0.0.5:5432: password=hunter2 rejected")

	rec := env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants", token: adminToken(t)})
	requireProblem(t, rec, http.StatusInternalServerError, "list tenants")
	require.NotContains(t, rec.Body.String(), "hunter2")
	require.Contains(t, env.logs.String(), "hunter2", "the error is logged for operators")
}

// collidingTenants fails every Create with ErrTenantExists.
type collidingTenants struct {
	*fakeTenants
	calls int
}

func (c *collidingTenants) Create(context.Context, string, string, int) (TenantView, error) {
	c.calls++
	return TenantView{}, persistence.ErrTenantExists
}
