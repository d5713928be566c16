// Package metrics exposes the runner's measurements as Prometheus collectors with
// GitLab Runner's names, so that existing dashboards and alerts keep working: a
// taskscaler's fleeting_taskscaler_* and fleeting_provisioner_* (Collector), and
// `runner run`'s gitlab_runner_* (Runner).
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

// DefaultOperationBuckets are the histogram buckets (seconds) used when none are
// configured: from a second to an hour, covering boot times of containers to VMs.
var DefaultOperationBuckets = []float64{1, 5, 10, 20, 30, 60, 120, 180, 300, 600, 1200, 1800, 3600}

// DefaultLifeBuckets are the buckets (seconds) of the instance life histogram: from a
// minute to a day.
var DefaultLifeBuckets = []float64{60, 300, 600, 1800, 3600, 7200, 14400, 28800, 57600, 86400}

// Buckets are the histogram buckets of [runners.autoscaler]: Operation
// (instance_operation_time_buckets) is the fallback of Creation, IsRunning, Deletion
// and Readiness; Life has no fallback. Nil means the default.
type Buckets struct {
	Operation []float64
	Creation  []float64
	IsRunning []float64
	Deletion  []float64
	Readiness []float64
	Life      []float64
}

func pick(v, fallback, def []float64) []float64 {
	switch {
	case len(v) > 0:
		return v
	case len(fallback) > 0:
		return fallback
	}
	return def
}

// Collector implements taskscaler.Metrics and prometheus.Collector. Register it once
// per scaler, with constant labels telling the scalers apart (the runner adds runner,
// runner_name and system_id).
type Collector struct {
	instances          *prometheus.GaugeVec
	maxInstances       prometheus.Gauge
	missedUpdates      prometheus.Counter
	instanceOperations *prometheus.CounterVec
	internalOperations *prometheus.CounterVec
	creationTime       prometheus.Histogram
	isRunningTime      prometheus.Histogram
	deletionTime       prometheus.Histogram
	lifeDuration       prometheus.Histogram

	tasks            *prometheus.GaugeVec
	maxTasksPerInst  prometheus.Gauge
	maxUseCount      prometheus.Gauge
	taskOperations   *prometheus.CounterVec
	scaleOperations  *prometheus.CounterVec
	desiredInstances prometheus.Gauge
	readinessTime    prometheus.Histogram
	all              []prometheus.Collector
}

var _ taskscaler.Metrics = (*Collector)(nil)

// New returns a Collector with constLabels on every series.
func New(constLabels prometheus.Labels, b Buckets) *Collector {
	op := b.Operation
	c := &Collector{
		instances: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fleeting_provisioner_instances",
			Help: "Instances by state (requested, creating, pending, running, deleting, unvouched).", ConstLabels: constLabels}, []string{"state"}),
		maxInstances: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fleeting_provisioner_max_instances",
			Help: "The max_instances setting (0 = unlimited).", ConstLabels: constLabels}),
		missedUpdates: prometheus.NewCounter(prometheus.CounterOpts{Name: "fleeting_provisioner_missed_updates_total",
			Help: "Reconcile cycles skipped because the plugin's Update failed.", ConstLabels: constLabels}),
		instanceOperations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleeting_provisioner_instance_operations_total",
			Help: "Instance operations (create, delete and their _failure forms).", ConstLabels: constLabels}, []string{"operation"}),
		internalOperations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleeting_provisioner_internal_operations_total",
			Help: "Plugin calls (increase, decrease, update, heartbeat, connect_info and their _failure forms).", ConstLabels: constLabels}, []string{"operation"}),
		creationTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fleeting_provisioner_instance_creation_time_seconds",
			Help: "From the creation request to the instance's first appearance.", ConstLabels: constLabels,
			Buckets: pick(b.Creation, op, DefaultOperationBuckets)}),
		isRunningTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fleeting_provisioner_instance_is_running_time_seconds",
			Help: "From the instance's first appearance to running.", ConstLabels: constLabels,
			Buckets: pick(b.IsRunning, op, DefaultOperationBuckets)}),
		deletionTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fleeting_provisioner_instance_deletion_time_seconds",
			Help: "From the deletion request to the instance's disappearance.", ConstLabels: constLabels,
			Buckets: pick(b.Deletion, op, DefaultOperationBuckets)}),
		lifeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fleeting_provisioner_instance_life_duration_seconds",
			Help: "From the instance's first appearance to its disappearance.", ConstLabels: constLabels,
			Buckets: pick(b.Life, nil, DefaultLifeBuckets)}),
		tasks: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fleeting_taskscaler_tasks",
			Help: "Job slots by state (idle, pending, reserved, acquired, unavailable, unhealthy, unready).", ConstLabels: constLabels}, []string{"state"}),
		maxTasksPerInst: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fleeting_taskscaler_max_tasks_per_instance",
			Help: "The capacity_per_instance setting.", ConstLabels: constLabels}),
		maxUseCount: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fleeting_taskscaler_max_use_count_per_instance",
			Help: "The max_use_count setting (0 = unlimited).", ConstLabels: constLabels}),
		taskOperations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleeting_taskscaler_task_operations_total",
			Help:        "Slot operations: reserve, reserve_available_capacity_failure, reserve_iop_capacity_failure, unreserve, acquire, acquire_failure, release.",
			ConstLabels: constLabels}, []string{"operation"}),
		scaleOperations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleeting_taskscaler_scale_operations_total",
			Help: "Scaling decisions that changed the fleet (up, down).", ConstLabels: constLabels}, []string{"operation"}),
		desiredInstances: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fleeting_taskscaler_desired_instances",
			Help: "Instances the last decision wanted, after max_instances and the provider's max size.", ConstLabels: constLabels}),
		readinessTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fleeting_taskscaler_task_instance_readiness_time_seconds",
			Help: "From running to ready (instance_ready_command included).", ConstLabels: constLabels,
			Buckets: pick(b.Readiness, op, DefaultOperationBuckets)}),
	}
	c.all = []prometheus.Collector{c.instances, c.maxInstances, c.missedUpdates, c.instanceOperations, c.internalOperations,
		c.creationTime, c.isRunningTime, c.deletionTime, c.lifeDuration, c.tasks, c.maxTasksPerInst, c.maxUseCount,
		c.taskOperations, c.scaleOperations, c.desiredInstances, c.readinessTime}
	return c
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, x := range c.all {
		x.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, x := range c.all {
		x.Collect(ch)
	}
}

// TaskOperation counts a slot operation.
func (c *Collector) TaskOperation(op string) { c.taskOperations.WithLabelValues(op).Inc() }

// ScaleOperation counts a scaling decision.
func (c *Collector) ScaleOperation(op string) { c.scaleOperations.WithLabelValues(op).Inc() }

// InstanceOperation counts an instance operation.
func (c *Collector) InstanceOperation(op string) { c.instanceOperations.WithLabelValues(op).Inc() }

// InternalOperation counts a plugin call.
func (c *Collector) InternalOperation(op string) { c.internalOperations.WithLabelValues(op).Inc() }

// MissedUpdate counts a failed Update.
func (c *Collector) MissedUpdate() { c.missedUpdates.Inc() }

// ObserveInstance records a lifecycle duration.
func (c *Collector) ObserveInstance(kind string, d time.Duration) {
	var h prometheus.Histogram
	switch kind {
	case "creation":
		h = c.creationTime
	case "is_running":
		h = c.isRunningTime
	case "deletion":
		h = c.deletionTime
	case "life":
		h = c.lifeDuration
	case "readiness":
		h = c.readinessTime
	default:
		return
	}
	h.Observe(d.Seconds())
}

// SetGauges publishes the current counts.
func (c *Collector) SetGauges(g taskscaler.Gauges) {
	t, i := g.Tasks, g.Instances
	set := func(v *prometheus.GaugeVec, state string, n int) { v.WithLabelValues(state).Set(float64(n)) }
	set(c.tasks, "idle", t.Idle)
	set(c.tasks, "pending", t.Pending)
	set(c.tasks, "reserved", t.Reserved)
	set(c.tasks, "acquired", t.Acquired)
	set(c.tasks, "unavailable", t.Unavailable)
	set(c.tasks, "unhealthy", t.Unhealthy)
	set(c.tasks, "unready", t.Unready)
	set(c.instances, "requested", i.Requested)
	set(c.instances, "creating", i.Creating)
	set(c.instances, "pending", i.Booting) // running, readiness not finished
	set(c.instances, "running", i.Running)
	set(c.instances, "deleting", i.Deleting)
	set(c.instances, "unvouched", i.Unvouched)
	c.desiredInstances.Set(float64(g.Desired))
	c.maxInstances.Set(float64(g.MaxInstances))
	c.maxTasksPerInst.Set(float64(g.MaxTasksPerInstance))
	c.maxUseCount.Set(float64(g.MaxUseCount))
}
