package transport_test

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/transport"
)

// TestPublishUnderMemoryAlarm raises a memory alarm on the broker, which
// makes it block every publishing connection, including those of other
// tests, so it runs only when TEST_BROKER_FAULTS=1.
func TestPublishUnderMemoryAlarm(t *testing.T) {
	if os.Getenv("TEST_BROKER_FAULTS") != "1" {
		t.Skip("set TEST_BROKER_FAULTS=1 to run: it blocks all publishing on the broker for a few seconds")
	}
	b, cfg := setup(t, func(c *transport.Config, _ *transport.Hooks) {
		c.PublishTimeout = time.Second
	})
	tenant := newTenant(t, b)

	watermark := rabbitmqctl(t, "eval", "vm_memory_monitor:get_vm_memory_high_watermark().")
	if _, err := strconv.ParseFloat(watermark, 64); err != nil {
		t.Skipf("memory watermark %q is not a fraction; not changing it", watermark)
	}
	t.Cleanup(func() { rabbitmqctl(t, "set_vm_memory_high_watermark", watermark) })
	// A watermark of 0 raises the alarm at once.
	rabbitmqctl(t, "set_vm_memory_high_watermark", "0")

	// The first calls time out waiting for confirms; once the broker sent
	// connection.blocked, calls fail at once. None takes much longer than
	// PublishTimeout.
	var fast bool
	deadline := time.Now().Add(waitTimeout)
	for !fast && time.Now().Before(deadline) {
		start := time.Now()
		err := b.Publish(t.Context(), tenant, messages("alarm", 1))
		took := time.Since(start)
		require.ErrorIs(t, err, transport.ErrUnavailable)
		require.Less(t, took, cfg.PublishTimeout+time.Second)
		fast = took < 100*time.Millisecond && strings.Contains(err.Error(), "blocks")
	}
	require.True(t, fast, "Publish did not fail fast while the broker blocked it")

	rabbitmqctl(t, "set_vm_memory_high_watermark", watermark)
	eventually(t, func() bool {
		return b.Publish(testContext(t), tenant, messages("recovered", 1)) == nil
	}, "Publish succeeds after the alarm cleared")
}
