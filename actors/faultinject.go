//go:build faultinject

package actors

import amqp "github.com/rabbitmq/amqp091-go"

// faultHeader marks a message that makes the worker storing it panic, in
// builds with the faultinject tag only. The fault-injection suite builds
// the server with that tag to crash workers from outside; release builds
// contain the no-op in nofaultinject.go.
const faultHeader = "x-fault-inject"

func injectFault(d *amqp.Delivery) {
	if v, _ := d.Headers[faultHeader].(string); v == "panic" {
		panic("injected worker crash (" + faultHeader + ": panic)")
	}
}
