//go:build faults

package faults

import (
	"bytes"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/transport"
)

// poison is a message the server can never store, with the dead-letter
// reason it must get.
type poison struct {
	body   []byte
	reason string
}

// poisonMessages returns, by message id, five messages of each kind the
// server must dead-letter: a body that is not JSON, a 300 KiB body over the
// 256 KiB limit, and a JSON string holding \u0000, which is valid JSON but
// which jsonb rejects.
func poisonMessages(prefix string) map[string]poison {
	large := append(append([]byte(`{"pad":"`), bytes.Repeat([]byte("x"), 300<<10)...), `"}`...)
	out := make(map[string]poison)
	for i := range 5 {
		out[fmt.Sprintf("%s-notjson-%d", prefix, i)] = poison{[]byte(fmt.Sprintf(`{"n":%d,`, i)), "invalid_json"}
		out[fmt.Sprintf("%s-large-%d", prefix, i)] = poison{large, "too_large"}
		out[fmt.Sprintf("%s-nul-%d", prefix, i)] = poison{[]byte(fmt.Sprintf(`{"n":%d,"s":"a\u0000b"}`, i)), "rejected"}
	}
	return out
}

func TestPoisonMessagesGoToDeadLetterQueue(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)
	id := e.createTenant(t, "poison", 2)
	token := e.tenantToken(t, id)

	// Good messages over AMQP, with the poison ones spread among them so
	// that they share batches with good ones.
	const good = 3000
	bad := poisonMessages("poison")
	var badIDs []string
	for mid := range bad {
		badIDs = append(badIDs, mid)
	}
	every := good / len(badIDs)
	p := newAMQPProducer(e.rabbitURL, id, "good", good+len(badIDs), 1500)
	p.body = func(i int) []byte {
		if i%every == every-1 && i/every < len(badIDs) {
			return bad[badIDs[i/every]].body
		}
		return fmt.Appendf(nil, `{"n":%d}`, i)
	}
	poisonAt := make(map[string]string) // producer id to poison id
	for k := range badIDs {
		poisonAt[p.id(k*every+every-1)] = badIDs[k]
	}
	// The producer names messages by index, so a poison message's expected
	// reason is found through poisonAt.
	wait := p.start(t)

	// Over HTTP the API refuses all three kinds at the door with a 400 (or
	// 413 for the size), so none of them reaches the queue.
	for name, payload := range map[string]any{
		"nul":   "a\u0000b",
		"large": string(bytes.Repeat([]byte("x"), 300<<10)),
	} {
		status, body, err := do(http.MethodPost, e.url("/api/v1/messages"), token,
			map[string]any{"message_id": "http-" + name, "payload": payload})
		require.NoError(t, err)
		require.Contains(t, []int{http.StatusBadRequest, http.StatusRequestEntityTooLarge}, status,
			"POST of a %s payload: %s", name, body)
	}
	status, body, err := rawPost(e.url("/api/v1/messages"), token, []byte(`{"payload": nope}`))
	require.NoError(t, err)
	require.Equal(t, http.StatusBadRequest, status, "POST of a body that is not JSON: %s", body)

	require.NoError(t, wait())
	waitDrained(t, id)

	// Every good message is stored once, and no poison message is stored.
	confirmed := p.confirmed.snapshot()
	require.Len(t, confirmed, good+len(badIDs))
	goodIDs := make(map[string]bool, good)
	for mid := range confirmed {
		if _, isPoison := poisonAt[mid]; !isPoison {
			goodIDs[mid] = true
		}
	}
	rows := requireExactlyOnce(t, e.databaseURL, id, goodIDs)
	require.Equal(t, good, rows.total)

	// The dead-letter queue contains exactly the poison messages, each once,
	// with its reason, after one delivery.
	want := make(map[string]string)
	for mid, badID := range poisonAt {
		want[mid] = bad[badID].reason
	}
	got := make(map[string]string)
	for _, dl := range deadLetters(t, e.rabbitURL, id) {
		_, seen := got[dl.messageID]
		require.False(t, seen, "message %s dead-lettered twice", dl.messageID)
		got[dl.messageID] = dl.reason
		require.Equal(t, int32(1), dl.attempts, "x-attempts of %s", dl.messageID)
		require.Equal(t, id, dl.routedBy, "x-original-routing-key of %s", dl.messageID)
	}
	require.Equal(t, want, got)

	// Nothing looped: each message was delivered once.
	m := e.metrics(t)
	total := float64(good + len(badIDs))
	require.Equal(t, total, m[fmt.Sprintf(`messaging_messages_received_total{tenant=%q}`, id)])
	require.Equal(t, float64(good), m[fmt.Sprintf(`messaging_messages_persisted_total{tenant=%q}`, id)])
	for reason, n := range map[string]float64{"invalid_json": 5, "too_large": 5, "rejected": 5} {
		series := fmt.Sprintf(`messaging_messages_dead_lettered_total{reason=%q,tenant=%q}`, reason, id)
		require.Equal(t, n, m[series], series)
	}
	t.Logf("stored %d good messages; dead-lettered %d poison messages", rows.total, len(got))
}

// rawPost posts body as it is, for request bodies that are not JSON.
func rawPost(url, token string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := httpClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	var buf bytes.Buffer
	_, err = buf.ReadFrom(res.Body)
	return res.StatusCode, buf.Bytes(), err
}

func TestPoisonWithDeadLetterQueueDeleted(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)
	id := e.createTenant(t, "dlqgone", 2)

	// Someone deletes the dead-letter queue, then a poison message arrives
	// among good ones. The server must still move it out of the queue
	// (into a re-declared dead-letter queue) instead of redelivering it
	// forever.
	deleteQueue(t, e.rabbitURL, transport.DeadLetterQueueName(id))
	p := newAMQPProducer(e.rabbitURL, id, id, 200, 1000)
	p.body = func(i int) []byte {
		if i == 100 {
			return []byte("not json")
		}
		return fmt.Appendf(nil, `{"n":%d}`, i)
	}
	require.NoError(t, p.start(t)())

	received := fmt.Sprintf(`messaging_messages_received_total{tenant=%q}`, id)
	time.Sleep(3 * time.Second)
	looped := e.metrics(t)[received]
	if looped > 1000 {
		t.Fatalf("a poison message was redelivered in a hot loop while the dead-letter queue "+
			"was missing: %.0f deliveries of 200 messages in 3 s", looped)
	}
	waitDrained(t, id)
	dls := deadLetters(t, e.rabbitURL, id)
	require.Len(t, dls, 1)
	require.Equal(t, p.id(100), dls[0].messageID)
	require.Equal(t, "invalid_json", dls[0].reason)
}
