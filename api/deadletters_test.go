package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/internal/testenv"
	"github.com/go-messaging-system/messaging/transport"
)

// fakeDeadLetters serves fixed dead letters and records the calls.
type fakeDeadLetters struct {
	mu        sync.Mutex
	letters   []transport.DeadLetter
	err       error
	lastLimit int
	lastIDs   []string
	lastAll   bool
}

var _ DeadLetters = (*fakeDeadLetters)(nil)

func (f *fakeDeadLetters) ListDeadLetters(_ context.Context, _ string, limit int) ([]transport.DeadLetter, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastLimit = limit
	if f.err != nil {
		return nil, f.err
	}
	return f.letters[:min(limit, len(f.letters))], nil
}

func (f *fakeDeadLetters) ReplayDeadLetters(_ context.Context, _ string, ids []string, all bool) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastIDs, f.lastAll = ids, all
	if f.err != nil {
		return 0, f.err
	}
	if all {
		return len(f.letters), nil
	}
	return len(ids), nil
}

type deadLetterListResponse struct {
	DeadLetters []map[string]any `json:"dead_letters"`
}

const deadLettersPath = "/api/v1/tenants/alpha/dead-letters"

func TestListDeadLettersShowsPayloads(t *testing.T) {
	t.Parallel()
	at := time.Date(2024, 1, 2, 3, 4, 5, 6000, time.FixedZone("X", 3600))
	fake := &fakeDeadLetters{letters: []transport.DeadLetter{
		{MessageID: "json", Reason: "rejected", Detail: "check violated", Attempts: 2,
			Body: []byte(`{"a": [1, 2]}`), PublishedAt: at},
		{MessageID: "text", Reason: "invalid_json", Body: []byte("not json")},
		{MessageID: "binary", Reason: "invalid_json", Body: []byte{0xff, 0x00, 0x01}},
		{MessageID: "big", Reason: "too_large", Body: []byte(`"` + strings.Repeat("x", 2000) + `"`)},
		{MessageID: "", Reason: "rejected", Body: nil},
		{MessageID: "json string", Body: []byte(`"aGVsbG8="`)},
	}}
	env := setup(t, withOptions(WithDeadLetters(fake)), withConfig(func(c *Config) { c.MaxPayloadBytes = 1024 }))

	rec := env.do(t, request{method: http.MethodGet, path: deadLettersPath, token: adminToken(t)})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, defaultDeadLetterLimit, fake.lastLimit)
	list := decodeJSON[deadLetterListResponse](t, rec).DeadLetters
	require.Len(t, list, 6)

	require.Equal(t, map[string]any{
		"message_id": "json", "reason": "rejected", "detail": "check violated", "attempts": float64(2),
		"payload": map[string]any{"a": []any{float64(1), float64(2)}}, "payload_bytes": float64(13),
		"payload_truncated": false, "published_at": "2024-01-02T02:04:05.000006Z",
	}, list[0])

	require.Equal(t, base64.StdEncoding.EncodeToString([]byte("not json")), list[1]["payload_base64"])
	require.NotContains(t, list[1], "payload")
	require.Nil(t, list[1]["published_at"])
	require.Contains(t, list[1], "published_at", "published_at is null, not absent")

	require.Equal(t, "/wAB", list[2]["payload_base64"])

	require.Equal(t, true, list[3]["payload_truncated"])
	require.Equal(t, float64(2002), list[3]["payload_bytes"])
	shown, err := base64.StdEncoding.DecodeString(list[3]["payload_base64"].(string))
	require.NoError(t, err)
	require.Len(t, shown, 1024)

	require.Equal(t, "", list[4]["payload_base64"], "an empty body is an empty base64 string")
	require.Equal(t, "aGVsbG8=", list[5]["payload"], "a JSON string stays a JSON string")
}

func TestListDeadLettersLimit(t *testing.T) {
	t.Parallel()
	fake := &fakeDeadLetters{}
	env := setup(t, withOptions(WithDeadLetters(fake)))
	cases := []struct {
		query  string
		status int
		limit  int
	}{
		{"?limit=1", 200, 1},
		{"?limit=100", 200, 100},
		{"?limit=101", 400, 0},
		{"?limit=0", 400, 0},
		{"?limit=-1", 400, 0},
		{"?limit=abc", 400, 0},
		{"?limit=", 400, 0},
		{"?limit=1&limit=2", 400, 0},
		{"?cursor=x", 400, 0},
		{"?limit=%zz", 400, 0},
	}
	for _, tc := range cases {
		fake.lastLimit = 0
		rec := env.do(t, request{method: http.MethodGet, path: deadLettersPath + tc.query, token: adminToken(t)})
		require.Equal(t, tc.status, rec.Code, "%s: %s", tc.query, rec.Body.String())
		if tc.status == 400 {
			requireProblem(t, rec, 400, "")
		}
		require.Equal(t, tc.limit, fake.lastLimit, tc.query)
	}
}

func TestDeadLetterRoutesAccess(t *testing.T) {
	t.Parallel()
	fake := &fakeDeadLetters{}
	env := setup(t, withOptions(WithDeadLetters(fake)))
	routes := []request{
		{method: http.MethodGet, path: deadLettersPath},
		{method: http.MethodPost, path: deadLettersPath + "/replay", body: `{"all": true}`},
	}
	for _, req := range routes {
		req.token = ""
		rec := env.do(t, req)
		requireProblem(t, rec, http.StatusUnauthorized, "")

		req.token = tenantToken(t, "alpha")
		requireProblem(t, env.do(t, req), http.StatusForbidden, "admin token")

		req.token = adminToken(t)
		for _, path := range []string{"ghost", "NOT_VALID"} {
			req.path = strings.Replace(req.path, "alpha", path, 1)
			requireProblem(t, env.do(t, req), http.StatusNotFound, "tenant not found")
			req.path = strings.Replace(req.path, path, "alpha", 1)
		}
	}
	require.Nil(t, fake.lastIDs, "no request reached the broker")
	require.Zero(t, fake.lastLimit)
}

func TestDeadLettersNotConfigured(t *testing.T) {
	t.Parallel()
	env := setup(t)
	rec := env.do(t, request{method: http.MethodGet, path: deadLettersPath, token: adminToken(t)})
	requireProblem(t, rec, http.StatusNotImplemented, "does not serve dead letters")
	rec = env.do(t, request{method: http.MethodPost, path: deadLettersPath + "/replay", token: adminToken(t),
		body: `{"all": true}`})
	requireProblem(t, rec, http.StatusNotImplemented, "does not serve dead letters")
}

func TestReplayDeadLetters(t *testing.T) {
	t.Parallel()
	fake := &fakeDeadLetters{letters: make([]transport.DeadLetter, 7)}
	env := setup(t, withOptions(WithDeadLetters(fake)))

	rec := env.do(t, request{method: http.MethodPost, path: deadLettersPath + "/replay", token: adminToken(t),
		body: `{"message_ids": ["a", "b", "a"]}`})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.JSONEq(t, `{"replayed": 2}`, rec.Body.String())
	require.Equal(t, []string{"a", "b"}, fake.lastIDs, "repeated ids are dropped")
	require.False(t, fake.lastAll)

	rec = env.do(t, request{method: http.MethodPost, path: deadLettersPath + "/replay", token: adminToken(t),
		body: `{"all": true}`})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.JSONEq(t, `{"replayed": 7}`, rec.Body.String())
	require.True(t, fake.lastAll)
	require.Nil(t, fake.lastIDs)
}

func TestReplayDeadLettersValidation(t *testing.T) {
	t.Parallel()
	ids := make([]string, maxReplayIDs+1)
	for i := range ids {
		ids[i] = fmt.Sprintf("%q", fmt.Sprint(i))
	}
	cases := []struct {
		name        string
		body        string
		contentType string
		status      int
		detail      string
	}{
		{"empty object", `{}`, "", 400, `send {"message_ids": [...]} or {"all": true}`},
		{"all false", `{"all": false}`, "", 400, `"all" must be true`},
		{"all null", `{"all": null}`, "", 400, `"all" must be true`},
		{"all not a boolean", `{"all": "yes"}`, "", 400, `"all" must be a bool`},
		{"both", `{"all": true, "message_ids": ["a"]}`, "", 400, "not both"},
		{"no ids", `{"message_ids": []}`, "", 400, "1 to 1000 ids"},
		{"null ids", `{"message_ids": null}`, "", 400, "1 to 1000 ids"},
		{"too many ids", `{"message_ids": [` + strings.Join(ids, ",") + `]}`, "", 400, "got 1001"},
		{"empty id", `{"message_ids": ["a", ""]}`, "", 400, "message_ids[1]: message_id must not be empty"},
		{"id too long", `{"message_ids": ["` + strings.Repeat("a", 201) + `"]}`, "", 400, "201 bytes"},
		{"id with control character", `{"message_ids": ["a\u0007"]}`, "", 400, "unprintable"},
		{"id not a string", `{"message_ids": [1]}`, "", 400, "must be"},
		{"unknown field", `{"all": true, "force": true}`, "", 400, `unknown field "force"`},
		{"repeated field", `{"all": true, "all": true}`, "", 400, "more than once"},
		{"not an object", `[]`, "", 400, "must be an object"},
		{"body too large", `{"message_ids": ["` + strings.Repeat("a", 20000) + `"]}`, "", 413, "larger than 16384 bytes"},
		{"wrong content type", `{"all": true}`, "text/plain", 415, "application/json"},
	}
	fake := &fakeDeadLetters{}
	env := setup(t, withOptions(WithDeadLetters(fake)), withConfig(func(c *Config) { c.MaxBodyBytes = 16384 }))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := env.do(t, request{method: http.MethodPost, path: deadLettersPath + "/replay", token: adminToken(t),
				body: tc.body, contentType: tc.contentType})
			requireProblem(t, rec, tc.status, tc.detail)
		})
	}
	require.Nil(t, fake.lastIDs)
	require.False(t, fake.lastAll)
}

func TestDeadLetterBackendErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		err    error
		status int
		detail string
	}{
		{fmt.Errorf("x: %w", transport.ErrUnavailable), 503, "broker is unavailable"},
		{fmt.Errorf("x: %w", transport.ErrQueueNotFound), 404, "queue does not exist"},
		{errors.New("boom"), 500, "internal error"},
	}
	for _, tc := range cases {
		fake := &fakeDeadLetters{err: tc.err}
		env := setup(t, withOptions(WithDeadLetters(fake)))
		rec := env.do(t, request{method: http.MethodGet, path: deadLettersPath, token: adminToken(t)})
		requireProblem(t, rec, tc.status, tc.detail)
		rec = env.do(t, request{method: http.MethodPost, path: deadLettersPath + "/replay", token: adminToken(t),
			body: `{"all": true}`})
		requireProblem(t, rec, tc.status, tc.detail)
		require.NotContains(t, rec.Body.String(), "boom")
	}
}

// The dead-letter routes against a real RabbitMQ: dead letters are listed
// without being removed, and a replay moves them to the tenant's queue.
func TestDeadLetterRoutesWithRabbitMQ(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	broker, err := transport.Dial(ctx, transport.Config{URL: testenv.RequireRabbitMQ(t)}, discardLogger(), transport.Hooks{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, broker.Close()) })

	tenant := testenv.TenantID("api")
	require.NoError(t, broker.DeclareTenant(ctx, tenant))
	t.Cleanup(func() {
		cleanup, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, broker.DeleteTenant(cleanup, tenant))
	})
	for i, body := range []string{`{"n":0}`, "not json", `{"n":2}`} {
		d := amqp.Delivery{MessageId: fmt.Sprintf("m%d", i), Body: []byte(body), RoutingKey: tenant,
			Headers: amqp.Table{transport.HeaderPublishedAt: "2024-01-02T03:04:05Z"}}
		require.NoError(t, broker.DeadLetter(ctx, tenant, d, transport.ReasonInvalidJSON, "bad", 1))
	}

	env := setup(t, withOptions(WithDeadLetters(broker)))
	env.tenants.tenants[tenant] = TenantView{ID: tenant, Name: tenant, WorkerCount: 1}
	path := "/api/v1/tenants/" + tenant + "/dead-letters"
	list := func() []map[string]any {
		rec := env.do(t, request{method: http.MethodGet, path: path, token: adminToken(t)})
		require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
		return decodeJSON[deadLetterListResponse](t, rec).DeadLetters
	}

	letters := list()
	require.Len(t, letters, 3)
	require.Len(t, list(), 3, "a listing removes nothing")
	byID := map[string]map[string]any{}
	for _, l := range letters {
		byID[l["message_id"].(string)] = l
	}
	require.Equal(t, map[string]any{"n": float64(0)}, byID["m0"]["payload"])
	require.Equal(t, base64.StdEncoding.EncodeToString([]byte("not json")), byID["m1"]["payload_base64"])
	require.Equal(t, "invalid_json", byID["m1"]["reason"])
	require.Equal(t, "bad", byID["m1"]["detail"])
	require.Equal(t, float64(1), byID["m1"]["attempts"])
	require.Equal(t, "2024-01-02T03:04:05Z", byID["m1"]["published_at"])

	rec := env.do(t, request{method: http.MethodPost, path: path + "/replay", token: adminToken(t),
		body: `{"message_ids": ["m1", "unknown"]}`})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.JSONEq(t, `{"replayed": 1}`, rec.Body.String())
	require.Len(t, list(), 2)
	depth, _, err := broker.QueueDepth(ctx, tenant)
	require.NoError(t, err)
	require.Equal(t, 1, depth)

	rec = env.do(t, request{method: http.MethodPost, path: path + "/replay", token: adminToken(t), body: `{"all": true}`})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	var replayed replayResponse
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &replayed))
	require.Equal(t, 2, replayed.Replayed)
	require.Empty(t, list())
	depth, _, err = broker.QueueDepth(ctx, tenant)
	require.NoError(t, err)
	require.Equal(t, 3, depth)
}
