package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func publish(t *testing.T, env *testEnv, tenant, body string) *publishResponse {
	t.Helper()
	rec := env.do(t, request{method: http.MethodPost, path: "/api/v1/messages", token: tenantToken(t, tenant), body: body})
	require.Equal(t, http.StatusAccepted, rec.Code, rec.Body.String())
	resp := decodeJSON[publishResponse](t, rec)
	return &resp
}

func TestPublishSingleMessage(t *testing.T) {
	t.Parallel()
	env := setup(t)
	before := time.Now().UTC()

	resp := publish(t, env, "alpha", `{"payload": {"a": [1, 2, {"b": null}]}, "message_id": "order-42"}`)
	require.Equal(t, 1, resp.Accepted)
	require.Equal(t, []string{"order-42"}, resp.MessageIDs)

	sent := env.pub.messages("alpha")
	require.Len(t, sent, 1)
	require.Equal(t, "order-42", sent[0].MessageID)
	require.Equal(t, `{"a":[1,2,{"b":null}]}`, string(sent[0].Body), "payload is compacted")
	require.False(t, sent[0].PublishedAt.Before(before))
	require.Empty(t, env.pub.messages("beta"))
}

func TestPublishGeneratesMessageIDs(t *testing.T) {
	t.Parallel()
	env := setup(t)
	resp := publish(t, env, "alpha", `{"messages": [{"payload": 1}, {"payload": "x", "message_id": null}, {"payload": null}]}`)
	require.Equal(t, 3, resp.Accepted)
	require.Len(t, resp.MessageIDs, 3)
	for _, id := range resp.MessageIDs {
		require.Regexp(t, uuidPattern, id)
	}
	require.NotEqual(t, resp.MessageIDs[0], resp.MessageIDs[1])

	sent := env.pub.messages("alpha")
	require.Len(t, sent, 3)
	require.Equal(t, "null", string(sent[2].Body))
	for i, m := range sent {
		require.Equal(t, resp.MessageIDs[i], m.MessageID)
	}
}

func TestPublishAcceptsAnyJSONPayload(t *testing.T) {
	t.Parallel()
	env := setup(t)
	payloads := []string{`null`, `true`, `0`, `-1.5e3`, `"text"`, `[]`, `{}`, `"\ud83d\ude00"`, `"\\u0000"`, `1e131071`}
	for _, p := range payloads {
		resp := publish(t, env, "alpha", `{"payload": `+p+`}`)
		require.Equal(t, 1, resp.Accepted, p)
	}
}

func TestPublishValidation(t *testing.T) {
	t.Parallel()
	big := `"` + strings.Repeat("x", 2000) + `"`
	many := func(n int, item string) string {
		items := make([]string, n)
		for i := range items {
			items[i] = strings.ReplaceAll(item, "#", fmt.Sprint(i))
		}
		return `{"messages": [` + strings.Join(items, ",") + `]}`
	}
	cases := []struct {
		name        string
		body        string
		contentType string
		status      int
		detail      string
	}{
		{"missing payload", `{"message_id": "a"}`, "", 400, `"payload" is required`},
		{"empty object", `{}`, "", 400, `"payload" is required`},
		{"empty batch", `{"messages": []}`, "", 400, "non-empty array"},
		{"null batch", `{"messages": null}`, "", 400, "non-empty array"},
		{"batch not an array", `{"messages": {"payload": 1}}`, "", 400, `"messages" must be an array`},
		{"batch item not an object", `{"messages": [1]}`, "", 400, "messages[0]: the JSON value must be an object"},
		{"batch item without payload", `{"messages": [{"payload": 1}, {"message_id": "x"}]}`, "", 400, `messages[1]: "payload" is required`},
		{"batch item unknown field", `{"messages": [{"payload": 1, "extra": 2}]}`, "", 400, `messages[0]: unknown field "extra"`},
		{"batch item duplicate field", `{"messages": [{"payload": 1, "payload": 2}]}`, "", 400, `messages[0]: field "payload" appears more than once`},
		{"both shapes", `{"payload": 1, "messages": [{"payload": 1}]}`, "", 400, "not both"},
		{"message_id with batch", `{"message_id": "a", "messages": [{"payload": 1}]}`, "", 400, "not both"},
		{"unknown field", `{"payload": 1, "priority": 5}`, "", 400, `unknown field "priority"`},
		{"field in other case", `{"Payload": 1}`, "", 400, `unknown field "Payload"`},
		{"trailing garbage", `{"payload": 1}]`, "", 400, "after the JSON object"},
		{"invalid JSON payload", `{"payload": nope}`, "", 400, "invalid JSON"},
		{"empty message_id", `{"payload": 1, "message_id": ""}`, "", 400, "message_id must not be empty"},
		{"message_id too long", `{"payload": 1, "message_id": "` + strings.Repeat("a", 201) + `"}`, "", 400, "201 bytes"},
		{"message_id multibyte too long", `{"payload": 1, "message_id": "` + strings.Repeat("é", 101) + `"}`, "", 400, "202 bytes"},
		{"message_id at limit", `{"payload": 1, "message_id": "` + strings.Repeat("a", 200) + `"}`, "", 202, ""},
		{"message_id with newline", `{"payload": 1, "message_id": "a\nb"}`, "", 400, "unprintable"},
		{"message_id with NUL", `{"payload": 1, "message_id": "a\u0000"}`, "", 400, "unprintable"},
		{"message_id with space", `{"payload": 1, "message_id": "order 42"}`, "", 202, ""},
		{"message_id not a string", `{"payload": 1, "message_id": 42}`, "", 400, `"message_id" must be a string`},
		{"duplicate message_id", `{"messages": [{"payload": 1, "message_id": "a"}, {"payload": 2, "message_id": "b"}, {"payload": 3, "message_id": "a"}]}`,
			"", 400, `messages[2]: message_id "a" is already used by messages[0]`},
		{"payload with NUL escape", `{"payload": {"k": "a\u0000b"}}`, "", 400, `\u0000`},
		{"payload key with NUL escape", `{"payload": {"\u0000": 1}}`, "", 400, `\u0000`},
		{"payload lone high surrogate", `{"payload": "\ud800"}`, "", 400, "surrogate"},
		{"payload lone low surrogate", `{"payload": "\udc00x"}`, "", 400, "surrogate"},
		{"payload reversed surrogates", `{"payload": "\udc00\ud800"}`, "", 400, "surrogate"},
		{"payload invalid UTF-8", "{\"payload\": \"\xff\xfe\"}", "", 400, "UTF-8"},
		{"payload number too large", `{"payload": 1e131072}`, "", 400, "outside the range"},
		{"payload number too precise", `{"payload": 1e-16384}`, "", 400, "outside the range"},
		{"payload exponent huge", `{"payload": [1e99999999999]}`, "", 400, "exponent"},
		{"payload over limit", `{"payload": ` + big + `}`, "", 400, "as stored"},
		{"payload over limit once expanded", `{"payload": 1e1500}`, "", 400, "as stored"},
		{"batch item payload over limit", `{"messages": [{"payload": 1}, {"payload": ` + big + `}]}`, "", 400, "messages[1]: payload is"},
		{"batch at limit", many(5, `{"payload": #}`), "", 202, ""},
		{"batch over limit", many(6, `{"payload": #}`), "", 400, "the maximum is 5"},
		{"body over limit", many(5, `{"payload": `+strings.Repeat(" ", 900)+`1}`), "", 413, "larger than 4096 bytes"},
		{"wrong content type", `{"payload": 1}`, "text/plain", 415, "application/json"},
		{"missing content type", `{"payload": 1}`, "-", 415, "application/json"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := setup(t, withConfig(func(c *Config) {
				c.MaxBodyBytes = 4096
				c.MaxPayloadBytes = 1024
				c.MaxBatchMessages = 5
			}))
			rec := env.do(t, request{method: http.MethodPost, path: "/api/v1/messages",
				token: tenantToken(t, "alpha"), body: tc.body, contentType: tc.contentType})
			if tc.status >= 400 {
				requireProblem(t, rec, tc.status, tc.detail)
				require.Zero(t, env.pub.calls, "nothing is published")
				return
			}
			require.Equal(t, tc.status, rec.Code, rec.Body.String())
		})
	}
}

func TestPublishBodyOverLimitWithoutContentLength(t *testing.T) {
	t.Parallel()
	env := setup(t, withConfig(func(c *Config) { c.MaxBodyBytes = 64 }))
	body := `{"payload": "` + strings.Repeat("x", 100) + `"}`
	r, _ := http.NewRequest(http.MethodPost, "/api/v1/messages", struct{ *strings.Reader }{strings.NewReader(body)})
	r.Header.Set("Authorization", "Bearer "+tenantToken(t, "alpha"))
	r.Header.Set("Content-Type", "application/json")
	require.EqualValues(t, 0, r.ContentLength, "the length is unknown to the handler")

	requireProblem(t, newRecorder(env, r), http.StatusRequestEntityTooLarge, "larger than 64 bytes")
}

func TestPublishConcurrentRequests(t *testing.T) {
	t.Parallel()
	env := setup(t)
	const requests, perRequest = 40, 10

	tokens := []string{tenantToken(t, "alpha"), tenantToken(t, "beta")}

	var wg sync.WaitGroup
	results := make(chan []string, requests)
	for i := range requests {
		wg.Go(func() {
			items := make([]string, perRequest)
			for j := range items {
				items[j] = fmt.Sprintf(`{"payload": {"request": %d, "n": %d}}`, i, j)
			}
			rec := env.do(t, request{method: http.MethodPost, path: "/api/v1/messages",
				token: tokens[i%2], body: `{"messages": [` + strings.Join(items, ",") + `]}`})
			var resp publishResponse
			if rec.Code == http.StatusAccepted && json.Unmarshal(rec.Body.Bytes(), &resp) == nil {
				results <- resp.MessageIDs
				return
			}
			results <- nil
		})
	}
	wg.Wait()
	close(results)

	seen := map[string]bool{}
	for ids := range results {
		require.Len(t, ids, perRequest)
		for _, id := range ids {
			require.False(t, seen[id], "message id %s generated twice", id)
			seen[id] = true
		}
	}
	require.Len(t, seen, requests*perRequest)
	require.Len(t, env.pub.messages("alpha"), requests/2*perRequest)
	require.Len(t, env.pub.messages("beta"), requests/2*perRequest)
	require.Contains(t, gatherText(t, env), `messaging_http_requests_total{code="202",method="POST",route="/api/v1/messages"} 40`)
}

type pageResponse struct {
	Messages []struct {
		ID          int64           `json:"id"`
		MessageID   string          `json:"message_id"`
		Payload     json.RawMessage `json:"payload"`
		PublishedAt time.Time       `json:"published_at"`
		StoredAt    time.Time       `json:"stored_at"`
	} `json:"messages"`
	NextCursor *string `json:"next_cursor"`
	HasMore    *bool   `json:"has_more"`
}

func listPage(t *testing.T, env *testEnv, path, token string) pageResponse {
	t.Helper()
	rec := env.do(t, request{method: http.MethodGet, path: path, token: token})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	page := decodeJSON[pageResponse](t, rec)
	require.NotNil(t, page.NextCursor, "next_cursor is always present")
	require.NotNil(t, page.HasMore, "has_more is always present")
	require.NotNil(t, page.Messages, "messages is an array, never null")
	return page
}

func TestListMessagesWalkThenPoll(t *testing.T) {
	t.Parallel()
	env := setup(t)
	env.msgs.add("alpha", 25)
	env.msgs.add("beta", 3)
	token := tenantToken(t, "alpha")

	var got []int64
	cursor := ""
	for _, want := range []struct {
		n       int
		hasMore bool
	}{{10, true}, {10, true}, {5, false}} {
		page := listPage(t, env, "/api/v1/messages?limit=10&cursor="+cursor, token)
		require.Len(t, page.Messages, want.n)
		require.Equal(t, want.hasMore, *page.HasMore)
		for _, m := range page.Messages {
			got = append(got, m.ID)
		}
		cursor = *page.NextCursor
	}
	require.Len(t, got, 25)
	for i, id := range got {
		require.EqualValues(t, i+1, id, "stable order, no gaps or repeats")
	}

	empty := listPage(t, env, "/api/v1/messages?cursor="+cursor, token)
	require.Empty(t, empty.Messages)
	require.False(t, *empty.HasMore)
	require.Equal(t, cursor, *empty.NextCursor, "an empty page echoes the position")

	env.msgs.add("alpha", 2)
	newer := listPage(t, env, "/api/v1/messages?cursor="+cursor, token)
	require.Len(t, newer.Messages, 2)
	require.EqualValues(t, 29, newer.Messages[0].ID, "ids 26..28 belong to beta")
}

func TestListMessagesShape(t *testing.T) {
	t.Parallel()
	env := setup(t)
	env.msgs.add("alpha", 1)
	rec := env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants/alpha/messages", token: adminToken(t)})
	require.Equal(t, http.StatusOK, rec.Code)

	var raw map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &raw))
	require.ElementsMatch(t, []string{"messages", "next_cursor", "has_more"}, keys(raw))
	var msgs []map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(raw["messages"], &msgs))
	require.Len(t, msgs, 1)
	require.ElementsMatch(t, []string{"id", "message_id", "payload", "published_at", "stored_at"}, keys(msgs[0]))
	require.JSONEq(t, `{"n": 1}`, string(msgs[0]["payload"]))
	require.Equal(t, defaultLimit, env.msgs.lastLimit)
}

func TestListMessagesKeepsHTMLCharacters(t *testing.T) {
	t.Parallel()
	env := setup(t)
	env.msgs.add("alpha", 1)
	env.msgs.stored["alpha"][0].Payload = json.RawMessage(`{"html": "<b>&amp;</b>"}`)

	rec := env.do(t, request{method: http.MethodGet, path: "/api/v1/messages", token: tenantToken(t, "alpha")})
	require.Equal(t, http.StatusOK, rec.Code)
	require.Contains(t, rec.Body.String(), `"payload":{"html":"<b>&amp;</b>"}`)
}

func keys(m map[string]json.RawMessage) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestListMessagesAdminAndTenantRoutesAgree(t *testing.T) {
	t.Parallel()
	env := setup(t)
	env.msgs.add("alpha", 12)

	own := listPage(t, env, "/api/v1/messages?limit=5", tenantToken(t, "alpha"))
	admin := listPage(t, env, "/api/v1/tenants/alpha/messages?limit=5", adminToken(t))
	self := listPage(t, env, "/api/v1/tenants/alpha/messages?limit=5", tenantToken(t, "alpha"))
	require.Equal(t, *own.NextCursor, *admin.NextCursor)
	require.Equal(t, *own.NextCursor, *self.NextCursor)

	next := listPage(t, env, "/api/v1/tenants/alpha/messages?limit=5&cursor="+*own.NextCursor, adminToken(t))
	require.EqualValues(t, 6, next.Messages[0].ID)
}

func TestListMessagesLimit(t *testing.T) {
	t.Parallel()
	cases := []struct {
		query  string
		status int
		limit  int
	}{
		{"", 200, 10},
		{"limit=1", 200, 1},
		{"limit=1000", 200, 1000},
		{"limit=010", 200, 10},
		{"limit=0", 400, 0},
		{"limit=1001", 400, 0},
		{"limit=-1", 400, 0},
		{"limit=+5", 400, 0},
		{"limit=10abc", 400, 0},
		{"limit=1e2", 400, 0},
		{"limit=5.0", 400, 0},
		{"limit=%205", 400, 0},
		{"limit=5%20", 400, 0},
		{"limit=", 400, 0},
		{"limit=99999999999999999999", 400, 0},
		{"limit=5&limit=6", 400, 0},
		{"limit=%zz", 400, 0},
		{"limit=5;cursor=", 400, 0},
		{"lmit=5", 400, 0},
		{"cursor=", 200, 10},
	}
	for _, tc := range cases {
		t.Run(tc.query, func(t *testing.T) {
			t.Parallel()
			env := setup(t)
			rec := env.do(t, request{method: http.MethodGet, path: "/api/v1/messages?" + tc.query, token: tenantToken(t, "alpha")})
			if tc.status == 400 {
				requireProblem(t, rec, http.StatusBadRequest, "")
				return
			}
			require.Equal(t, tc.status, rec.Code, rec.Body.String())
			require.Equal(t, tc.limit, env.msgs.lastLimit)
		})
	}
}

func TestListMessagesRejectsBadCursors(t *testing.T) {
	t.Parallel()
	env := setup(t)
	env.msgs.add("alpha", 5)
	env.msgs.add("beta", 5)
	alphaToken := tenantToken(t, "alpha")
	valid := *listPage(t, env, "/api/v1/messages?limit=2", alphaToken).NextCursor
	foreign := *listPage(t, env, "/api/v1/messages?limit=2", tenantToken(t, "beta")).NextCursor

	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}
	cases := map[string]string{
		"other tenant's cursor": foreign,
		"edited first char":     flip(valid, 0),
		"edited middle char":    flip(valid, len(valid)/2),
		"edited last char":      flip(valid, len(valid)-1),
		"truncated":             valid[:len(valid)-1],
		"truncated to half":     valid[:len(valid)/2],
		"extended":              valid + "A",
		"padded":                valid + "=",
		"standard base64":       strings.NewReplacer("-", "+", "_", "/").Replace(valid) + "+/",
		"not base64":            "!!!!",
		"plain number":          "12345",
		"very long":             strings.Repeat("A", 5000),
	}
	for name, cursor := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rec := env.do(t, request{method: http.MethodGet, path: "/api/v1/messages?cursor=" + cursor, token: alphaToken})
			requireProblem(t, rec, http.StatusBadRequest, "invalid cursor")
		})
	}

	rec := env.do(t, request{method: http.MethodGet, path: "/api/v1/messages?cursor=" + valid, token: alphaToken})
	require.Equal(t, http.StatusOK, rec.Code, "the untouched cursor still works")
}
