// Package cloudsim is a simulated cloud for tests and benchmarks of the cloud plugins
// (aws, googlecloud, azure). One Go state machine models what the three clouds have in
// common, and each cloud's wire-level fake (an httptest server or an SDK fake transport)
// is a thin translator from that cloud's protocol to calls on a *Cloud.
//
// # Model
//
// A Cloud holds groups (an AWS Auto Scaling group, a GCP managed instance group, an
// Azure VM scale set) and VMs. A group has a desired size (DesiredCapacity, targetSize,
// SKU capacity) bounded by Min and Max, and Settings that the plugins' preflight checks
// read: scale-in protection, zone rebalancing, autoscaling policies, overprovisioning.
//
// A VM's lifecycle is
//
//	pending --(boot delay)--> running --(terminate)--> terminating --(stop delay)--> terminated
//
// The boot and stop delays are drawn from a Distribution (Fixed or LogNormal). Nothing
// runs in the background: every call on a Cloud first brings the state up to the clock's
// current time (launching VMs for groups below their desired size, finishing boots and
// terminations). With a *VirtualClock a test or benchmark decides when time passes and
// runs deterministically; with the default real clock the simulation follows wall time.
//
// # Calls, throttling and faults
//
// A wire fake wraps each API request in Cloud.Call(op): that counts the call (Calls),
// applies fault injection (Inject) and throttling (Throttle: a token bucket per operation
// family, refilled on the Cloud's clock), and returns an *Error whose Kind the fake turns
// into its cloud's error (KindThrottled → AWS "Throttling"/"RequestLimitExceeded",
// GCP 429 rateLimitExceeded, Azure 429). Errors from the state machine (KindNotFound,
// KindInvalid, KindCapacity) are translated the same way.
//
// Other faults: Options.ListLag hides new VMs from the detailed listing (AllVMs, GetVM)
// for a while, as an eventually consistent API does; Reclaim removes a VM without a
// request (spot reclaim, operator); Settings.Overprovision launches about 20% extra VMs
// and deletes them once the requested ones run; a Backend whose Start fails makes the
// VM fail its boot, and the group replaces it.
//
// Capacity is limited cloud-wide (Options.Capacity) and per group (Group.Capacity).
// When a group is below its desired size and no capacity is left, the missing VMs are
// simply not launched and Group.LastError says why, as an ASG activity, a MIG's
// lastAttempt or a VMSS instance error would; the launches are retried on later calls.
//
// # Accounting and consistency
//
// Every VM ever created is kept. Check verifies that none was lost or duplicated: each VM
// is either live (pending, running, terminating) in the group that created it, or
// terminated with the recorded reason (the API request that deleted it, a scale-in by
// the group itself, or an external event such as a spot reclaim via Reclaim).
//
// # VM backends
//
// A Backend gives running VMs their network identity. The default RecordBackend only
// allocates fake private (10.0.0.0/8) and public (203.0.113.0/24) addresses. SSHBackend
// makes each running VM a real SSH server on 127.0.0.1 with its own host key and working
// directory; commands run as child processes of the test. It accepts the backend's static
// keys and keys pushed for the VM with PushSSHKey (EC2 Instance Connect style, valid
// for a minute of the Cloud's clock). The VM's Endpoint (host, port, host key) is
// reported so a fake can hand it to its plugin (the AWS fake uses instance tags).
//
// # A fake AWS as a process
//
// Only packages under plugins/ may import cloudsim, so tests elsewhere (several `runner
// run` managers sharing one instance group, under host/cmd/runner) build and run
// cmd/fakecloud instead: `fakecloud -dir DIR [-group NAME] [-max N] [-listen ADDR]`
// starts what awsfake.Start with SSH does (awsfake.NewEnv), prints one JSON line with
// the aws plugin's plugin_config, the file holding the client key the VMs accept, and
// the URL of a control API (GET /vms, /check, /group: the cloud's truth for the test's
// assertions), and runs until SIGTERM or SIGINT, when it stops every VM and the commands
// running on them. Its package documentation has the details.
//
// # Writing a fake for another cloud
//
// The AWS fake (subpackage awsfake) is the model; a GCP or Azure fake follows the same
// shape:
//
//   - one Cloud per test, with Options.NewID naming VMs the cloud's way and
//     Options.Families grouping operations into the cloud's rate-limit buckets;
//   - every request starts with Cloud.Call(op) and maps a returned *Error to the
//     cloud's error (Kind → status and code, Error.Code verbatim when set);
//   - resize / capacity update → SetDesired; delete-instances → Terminate with
//     decrement true (MIG deleteInstances and VMSS deleteInstances shrink the target
//     size; AWS TerminateInstanceInAutoScalingGroup decrements when asked to);
//   - listings → VMs (live VMs in creation order) or AllVMs (terminated ones too),
//     mapping State to the cloud's status names (awsfake's package doc shows AWS's);
//   - group settings → Group.Settings, read back by the plugins' doctor checks;
//   - a VM with a non-zero Endpoint is a real SSH server: report Endpoint.Host and
//     Endpoint.Port (and HostKey) however the cloud lets the plugin learn them;
//   - a Start(t, …) helper that returns the plugin_config JSON, so end-to-end tests
//     (conformance kit, `runner exec`) under plugins/ can use the fake in one line.
//
// Tests assert on Calls (API efficiency), ThrottledCalls, Reasons (who terminated
// what) and Check (nothing lost or duplicated).
//
// Typical use in a wire fake:
//
//	cloud := cloudsim.New(cloudsim.Options{BootDelay: cloudsim.Fixed(30 * time.Second), Clock: vclock})
//	cloud.CreateGroup(cloudsim.Group{Name: "ci", Max: 100})
//	// in the HTTP handler:
//	if err := cloud.Call("SetDesiredCapacity"); err != nil { writeError(w, err); return }
//	err := cloud.SetDesired("ci", n)
package cloudsim
