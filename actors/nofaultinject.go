//go:build !faultinject

package actors

import amqp "github.com/rabbitmq/amqp091-go"

// injectFault does nothing: only builds with the faultinject tag can crash
// a worker on purpose (see faultinject.go).
func injectFault(*amqp.Delivery) {}
