// Package gcpfake is a wire-level fake of the Google Compute Engine APIs the googlecloud
// plugin calls, backed by a cloudsim.Cloud. It is an httptest server that the unmodified
// cloud.google.com/go/compute/apiv1 REST clients talk to through option.WithEndpoint
// (the plugin's `endpoint` key), so JSON encoding, pagination, retries, error decoding
// and long-running operations are all exercised:
//
//   - instanceGroupManagers (zonal): get, resize, deleteInstances,
//     listManagedInstances (maxResults/pageToken pagination);
//   - instances: get, setMetadata (fingerprint checked; `ssh-keys` lines authorize keys
//     on the simulated VM's SSH server);
//   - zoneOperations: get and wait. A mutation answers with a RUNNING operation that is
//     DONE at its next poll (after OperationPolls more polls);
//   - Cloud Resource Manager v1 projects.testIamPermissions, and an OAuth token
//     endpoint for the service-account file WriteCredentials makes.
//
// One cloudsim group is one zonal managed instance group, named like the group, in the
// group's single zone (Settings.Zones[0]); a group spread over several zones is a
// regional MIG and is not found at the zonal endpoints. cloudsim states map to
// currentAction / instanceStatus as pending → CREATING/PROVISIONING, running →
// NONE/RUNNING, terminating → DELETING/STOPPING; terminated VMs are gone (404). Group
// settings map to status.autoscaler (Policies) and updatePolicy.type PROACTIVE
// (Rebalance: the MIG replaces VMs on its own).
//
// Each instance has the metadata item `created-by` (the MIG's URL) as on GCP, and, when
// it is served by an SSH backend, `flotilla-ssh-port` and `flotilla-ssh-host-key`, which
// the plugin uses when present.
//
// Errors have GCP's JSON shape: KindThrottled → 429 rateLimitExceeded, KindDenied → 403
// forbidden, KindNotFound → 404 notFound, KindInvalid → 400 invalid, KindCapacity → 400
// ZONE_RESOURCE_POOL_EXHAUSTED, others → 500 backendError; an injected *cloudsim.Error
// with a Code sends that reason. FailOperations makes mutations fail inside their
// operation (DONE with an error) instead of at the HTTP call.
package gcpfake

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/compute/apiv1/computepb"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
)

// Metadata keys the fake sets on instances; the plugin reads them when present.
const (
	MetaSSHPort    = "flotilla-ssh-port"
	MetaSSHHostKey = "flotilla-ssh-host-key"
	MetaCreatedBy  = "created-by"
	MetaSSHKeys    = "ssh-keys"
)

// The operation names the fake passes to cloudsim.Cloud.Call, one per API method.
const (
	OpGetIGM          = "instanceGroupManagers.get"
	OpResize          = "instanceGroupManagers.resize"
	OpDeleteInstances = "instanceGroupManagers.deleteInstances"
	OpListManaged     = "instanceGroupManagers.listManagedInstances"
	OpGetInstance     = "instances.get"
	OpSetMetadata     = "instances.setMetadata"
	OpWait            = "zoneOperations.wait"
	OpGetOperation    = "zoneOperations.get"
	OpTestPermissions = "projects.testIamPermissions"
)

// Families maps operations to throttling families the way Compute Engine meters its API
// rate quotas: read requests, write requests and operation reads per project.
var Families = map[string]string{
	OpGetIGM:          "compute-read",
	OpListManaged:     "compute-read",
	OpGetInstance:     "compute-read",
	OpResize:          "compute-write",
	OpDeleteInstances: "compute-write",
	OpSetMetadata:     "compute-write",
	OpWait:            "compute-operations",
	OpGetOperation:    "compute-operations",
	OpTestPermissions: "resourcemanager",
}

// permissionOps maps an IAM permission to the operations that need it.
var permissionOps = map[string][]string{
	"compute.instanceGroupManagers.get":    {OpGetIGM, OpListManaged},
	"compute.instanceGroupManagers.update": {OpResize, OpDeleteInstances},
	"compute.instances.get":                {OpGetInstance},
	"compute.instances.setMetadata":        {OpSetMetadata},
	"compute.zoneOperations.get":           {OpWait, OpGetOperation},
}

// NewID names VMs as a MIG does: the base instance name and a suffix.
func NewID(n int) string { return fmt.Sprintf("flotilla-%05d", n) }

// Fake is a running fake Compute Engine endpoint.
type Fake struct {
	Cloud  *cloudsim.Cloud
	Server *httptest.Server
	// Project is the only project the fake knows; default "flotilla-test".
	Project string
	// PageSize caps listManagedInstances pages (default 500, GCP's default and cap), so
	// tests can force pagination with few instances.
	PageSize int
	// OperationPolls is how many polls (get or wait) an operation answers RUNNING
	// before DONE; default 0 (DONE at the first poll).
	OperationPolls int

	mu       sync.Mutex
	ops      map[string]*operation
	nextOp   int
	requests map[string]string // requestId → operation name, for idempotent retries
	meta     map[string]*metadata
	denied   map[string]bool
	opFaults map[string][]opFault

	bearer, anonymous int // API requests with and without an Authorization bearer token
}

type operation struct {
	proto *computepb.Operation
	polls int
}

type metadata struct {
	fingerprint int
	items       map[string]string
}

type opFault struct {
	err   *cloudsim.Error
	times int
}

// New serves cloud over HTTP on 127.0.0.1. Close the Fake when done.
func New(cloud *cloudsim.Cloud) *Fake {
	f := &Fake{Cloud: cloud, Project: "flotilla-test", PageSize: 500,
		ops: map[string]*operation{}, requests: map[string]string{}, meta: map[string]*metadata{},
		denied: map[string]bool{}, opFaults: map[string][]opFault{}}
	mux := http.NewServeMux()
	const igm = "/compute/v1/projects/{project}/zones/{zone}/instanceGroupManagers/{igm}"
	mux.HandleFunc("GET "+igm, f.getIGM)
	mux.HandleFunc("POST "+igm+"/resize", f.resize)
	mux.HandleFunc("POST "+igm+"/deleteInstances", f.deleteInstances)
	mux.HandleFunc("POST "+igm+"/listManagedInstances", f.listManaged)
	const inst = "/compute/v1/projects/{project}/zones/{zone}/instances/{name}"
	mux.HandleFunc("GET "+inst, f.getInstance)
	mux.HandleFunc("POST "+inst+"/setMetadata", f.setMetadata)
	const op = "/compute/v1/projects/{project}/zones/{zone}/operations/{op}"
	mux.HandleFunc("GET "+op, f.pollOperation(OpGetOperation))
	mux.HandleFunc("POST "+op+"/wait", f.pollOperation(OpWait))
	mux.HandleFunc("POST /v1/projects/{resource}", f.testPermissions)
	mux.HandleFunc("POST /token", f.token)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &cloudsim.Error{Kind: cloudsim.KindNotFound, Message: fmt.Sprintf("gcpfake does not implement %s %s", r.Method, r.URL.Path)})
	})
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/token" {
			f.mu.Lock()
			if strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
				f.bearer++
			} else {
				f.anonymous++
			}
			f.mu.Unlock()
		}
		mux.ServeHTTP(w, r)
	}))
	return f
}

// Requests returns how many API requests carried an OAuth bearer token and how many
// carried none: a plugin using credentials_file must send only the former.
func (f *Fake) Requests() (bearer, anonymous int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bearer, f.anonymous
}

// URL is the endpoint to give the SDK clients (option.WithEndpoint) or the plugin.
func (f *Fake) URL() string { return f.Server.URL }

// Close stops the server (not the cloud).
func (f *Fake) Close() { f.Server.Close() }

// Deny makes the caller lack the named IAM permissions (such as
// "compute.instanceGroupManagers.update"): testIamPermissions leaves them out and the
// calls that need them answer 403.
func (f *Fake) Deny(permissions ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range permissions {
		f.denied[p] = true
	}
}

// FailOperations makes the next times mutations of op (OpResize, OpDeleteInstances,
// OpSetMetadata) accepted at the HTTP call but not carried out: their operation ends
// DONE with err, as a GCP operation that fails does. times < 0 means every one.
func (f *Fake) FailOperations(op string, times int, err *cloudsim.Error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.opFaults[op] = append(f.opFaults[op], opFault{err: err, times: times})
}

// ClearFaults removes every fault queued with FailOperations.
func (f *Fake) ClearFaults() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.opFaults = map[string][]opFault{}
}

// takeOpFault returns the operation fault queued for op, if any.
func (f *Fake) takeOpFault(op string) *cloudsim.Error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fs := f.opFaults[op]
	if len(fs) == 0 {
		return nil
	}
	e := fs[0].err
	if fs[0].times > 0 {
		fs[0].times--
		if fs[0].times == 0 {
			f.opFaults[op] = fs[1:]
		}
	}
	return e
}

// ---- errors and replies ----

// reason returns the HTTP status and GCP error reason for err.
func reason(err error) (int, string, string) {
	e, ok := err.(*cloudsim.Error)
	if !ok {
		return http.StatusInternalServerError, "backendError", err.Error()
	}
	status, r := http.StatusInternalServerError, "backendError"
	switch e.Kind {
	case cloudsim.KindThrottled:
		status, r = http.StatusTooManyRequests, "rateLimitExceeded"
	case cloudsim.KindDenied:
		status, r = http.StatusForbidden, "forbidden"
	case cloudsim.KindNotFound:
		status, r = http.StatusNotFound, "notFound"
	case cloudsim.KindInvalid:
		status, r = http.StatusBadRequest, "invalid"
	case cloudsim.KindCapacity:
		status, r = http.StatusBadRequest, "ZONE_RESOURCE_POOL_EXHAUSTED"
	}
	if e.Code != "" {
		r = e.Code
	}
	return status, r, e.Message
}

// writeError sends err in GCP's JSON error shape.
func writeError(w http.ResponseWriter, err error) {
	status, r, msg := reason(err)
	domain := "global"
	if r == "rateLimitExceeded" {
		domain = "usageLimits"
	}
	body := map[string]any{"error": map[string]any{
		"code": status, "message": msg,
		"errors": []map[string]string{{"message": msg, "domain": domain, "reason": r}},
	}}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func writeProto(w http.ResponseWriter, m proto.Message) {
	b, err := protojson.Marshal(m)
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	_, _ = w.Write(b)
}

// call checks the permission for op, then records the call with the cloud (faults,
// throttling). It writes the error and returns false when the call may not proceed.
func (f *Fake) call(w http.ResponseWriter, op string) bool {
	if err := f.Cloud.Call(op); err != nil {
		writeError(w, err)
		return false
	}
	f.mu.Lock()
	var missing string
	for p, ops := range permissionOps {
		if f.denied[p] && slices.Contains(ops, op) {
			missing = p
		}
	}
	f.mu.Unlock()
	if missing != "" {
		writeError(w, &cloudsim.Error{Kind: cloudsim.KindDenied, Message: fmt.Sprintf("Required '%s' permission for 'projects/%s'", missing, f.Project)})
		return false
	}
	return true
}

func (f *Fake) zoneURL(zone string) string {
	return fmt.Sprintf("https://www.googleapis.com/compute/v1/projects/%s/zones/%s", f.Project, zone)
}

// InstanceURL is the URL of an instance, as MIGs list and deleteInstances takes them.
func (f *Fake) InstanceURL(zone, name string) string {
	return f.zoneURL(zone) + "/instances/" + name
}

// IGMURL is the URL of a zonal managed instance group.
func (f *Fake) IGMURL(zone, name string) string {
	return f.zoneURL(zone) + "/instanceGroupManagers/" + name
}

// group finds the zonal MIG the request names, writing a 404 when there is none.
func (f *Fake) group(w http.ResponseWriter, r *http.Request) (cloudsim.Group, bool) {
	project, zone, name := r.PathValue("project"), r.PathValue("zone"), r.PathValue("igm")
	g, err := f.Cloud.GetGroup(name)
	if project != f.Project || err != nil || len(g.Settings.Zones) != 1 || g.Settings.Zones[0] != zone {
		writeError(w, &cloudsim.Error{Kind: cloudsim.KindNotFound,
			Message: fmt.Sprintf("The resource 'projects/%s/zones/%s/instanceGroupManagers/%s' was not found", project, zone, name)})
		return cloudsim.Group{}, false
	}
	return g, true
}

// ---- operations ----

// newOperation records an operation for a mutation of target; failed, when set, is the
// error it ends with.
func (f *Fake) newOperation(kind, zone, target, requestID string, failed *cloudsim.Error) *computepb.Operation {
	f.mu.Lock()
	defer f.mu.Unlock()
	if requestID != "" {
		if name, ok := f.requests[requestID]; ok {
			return proto.Clone(f.ops[name].proto).(*computepb.Operation)
		}
	}
	f.nextOp++
	name := fmt.Sprintf("operation-%d-%s", f.nextOp, kind)
	now := f.Cloud.Now().UTC().Format(time.RFC3339)
	op := &computepb.Operation{
		Name: proto.String(name), Id: proto.Uint64(uint64(7000000 + f.nextOp)), OperationType: proto.String(kind),
		Kind: proto.String("compute#operation"), Status: computepb.Operation_RUNNING.Enum(),
		TargetLink: proto.String(target), Zone: proto.String(f.zoneURL(zone)), InsertTime: proto.String(now),
		SelfLink: proto.String(f.zoneURL(zone) + "/operations/" + name), Progress: proto.Int32(0),
	}
	if failed != nil {
		status, r, msg := reason(failed)
		op.HttpErrorStatusCode = proto.Int32(int32(status))
		op.HttpErrorMessage = proto.String(http.StatusText(status))
		op.Error = &computepb.Error{Errors: []*computepb.Errors{{Code: proto.String(r), Message: proto.String(msg)}}}
	}
	if requestID != "" {
		f.requests[requestID] = name
		op.ClientOperationId = proto.String(requestID)
	}
	f.ops[name] = &operation{proto: op, polls: f.OperationPolls}
	out := proto.Clone(op).(*computepb.Operation)
	// The error shows once the operation is DONE, as on GCP.
	out.Error, out.HttpErrorStatusCode, out.HttpErrorMessage = nil, nil, nil
	return out
}

func (f *Fake) pollOperation(op string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !f.call(w, op) {
			return
		}
		f.mu.Lock()
		o, ok := f.ops[r.PathValue("op")]
		if !ok || r.PathValue("project") != f.Project {
			f.mu.Unlock()
			writeError(w, &cloudsim.Error{Kind: cloudsim.KindNotFound, Message: fmt.Sprintf("The resource 'projects/%s/zones/%s/operations/%s' was not found", r.PathValue("project"), r.PathValue("zone"), r.PathValue("op"))})
			return
		}
		out := proto.Clone(o.proto).(*computepb.Operation)
		if o.polls > 0 {
			o.polls--
			out.Error, out.HttpErrorStatusCode, out.HttpErrorMessage = nil, nil, nil
		} else {
			out.Status = computepb.Operation_DONE.Enum()
			out.Progress = proto.Int32(100)
			out.EndTime = proto.String(f.Cloud.Now().UTC().Format(time.RFC3339))
		}
		f.mu.Unlock()
		writeProto(w, out)
	}
}

// ---- instance group managers ----

func (f *Fake) getIGM(w http.ResponseWriter, r *http.Request) {
	if !f.call(w, OpGetIGM) {
		return
	}
	g, ok := f.group(w, r)
	if !ok {
		return
	}
	vms, _ := f.Cloud.VMs(g.Name)
	var creating, none, deleting int32
	for _, v := range vms {
		switch v.State {
		case cloudsim.Pending:
			creating++
		case cloudsim.Running:
			none++
		case cloudsim.Terminating:
			deleting++
		}
	}
	zone := g.Settings.Zones[0]
	m := &computepb.InstanceGroupManager{
		Name: proto.String(g.Name), Id: proto.Uint64(4000000 + uint64(len(g.Name))), Kind: proto.String("compute#instanceGroupManager"),
		Zone: proto.String(f.zoneURL(zone)), SelfLink: proto.String(f.IGMURL(zone, g.Name)),
		BaseInstanceName: proto.String("flotilla"), TargetSize: proto.Int32(int32(g.Desired)),
		InstanceTemplate: proto.String(fmt.Sprintf("https://www.googleapis.com/compute/v1/projects/%s/global/instanceTemplates/%s", f.Project, g.Name)),
		CurrentActions:   &computepb.InstanceGroupManagerActionsSummary{Creating: proto.Int32(creating), None: proto.Int32(none), Deleting: proto.Int32(deleting)},
		Status:           &computepb.InstanceGroupManagerStatus{IsStable: proto.Bool(creating == 0 && deleting == 0)},
		UpdatePolicy:     &computepb.InstanceGroupManagerUpdatePolicy{Type: proto.String("OPPORTUNISTIC")},
	}
	if len(g.Settings.Policies) > 0 {
		m.Status.Autoscaler = proto.String(f.zoneURL(zone) + "/autoscalers/" + g.Settings.Policies[0])
	}
	if g.Settings.Rebalance {
		m.UpdatePolicy.Type = proto.String("PROACTIVE")
	}
	writeProto(w, m)
}

func (f *Fake) resize(w http.ResponseWriter, r *http.Request) {
	if !f.call(w, OpResize) {
		return
	}
	g, ok := f.group(w, r)
	if !ok {
		return
	}
	size, err := strconv.Atoi(r.URL.Query().Get("size"))
	if err != nil || size < 0 {
		writeError(w, &cloudsim.Error{Kind: cloudsim.KindInvalid, Message: fmt.Sprintf("Invalid value for field 'size': '%s'. Must be greater than or equal to 0.", r.URL.Query().Get("size"))})
		return
	}
	zone, reqID := g.Settings.Zones[0], r.URL.Query().Get("requestId")
	if f.seen(reqID) {
		writeProto(w, f.newOperation("compute.instanceGroupManagers.resize", zone, f.IGMURL(zone, g.Name), reqID, nil))
		return
	}
	fault := f.takeOpFault(OpResize)
	if fault == nil {
		if err := f.Cloud.SetDesired(g.Name, size); err != nil {
			writeError(w, err)
			return
		}
	}
	writeProto(w, f.newOperation("compute.instanceGroupManagers.resize", zone, f.IGMURL(zone, g.Name), reqID, fault))
}

// seen reports whether requestID was used before: the retry of a mutation is answered
// with the first one's operation and not carried out again.
func (f *Fake) seen(requestID string) bool {
	if requestID == "" {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.requests[requestID]
	return ok
}

// instanceName returns the name in an instance URL or partial URL
// (zones/z/instances/name), with its zone when the URL names one.
func instanceName(u string) (zone, name string) {
	parts := strings.Split(strings.TrimSuffix(u, "/"), "/")
	name = parts[len(parts)-1]
	for i := 0; i+1 < len(parts); i++ {
		if parts[i] == "zones" {
			zone = parts[i+1]
		}
	}
	return zone, name
}

func (f *Fake) deleteInstances(w http.ResponseWriter, r *http.Request) {
	if !f.call(w, OpDeleteInstances) {
		return
	}
	g, ok := f.group(w, r)
	if !ok {
		return
	}
	var body computepb.InstanceGroupManagersDeleteInstancesRequest
	raw, _ := io.ReadAll(r.Body)
	if err := protojson.Unmarshal(raw, &body); err != nil {
		writeError(w, &cloudsim.Error{Kind: cloudsim.KindInvalid, Message: "Invalid JSON payload received: " + err.Error()})
		return
	}
	if len(body.Instances) == 0 || len(body.Instances) > 1000 {
		writeError(w, &cloudsim.Error{Kind: cloudsim.KindInvalid, Message: fmt.Sprintf("Invalid value for field 'resource.instances': %d instances; between 1 and 1000 are allowed", len(body.Instances))})
		return
	}
	zone, reqID := g.Settings.Zones[0], r.URL.Query().Get("requestId")
	if f.seen(reqID) {
		writeProto(w, f.newOperation("compute.instanceGroupManagers.deleteInstances", zone, f.IGMURL(zone, g.Name), reqID, nil))
		return
	}
	vms, _ := f.Cloud.VMs(g.Name)
	members := map[string]bool{}
	for _, v := range vms {
		members[v.ID] = true
	}
	var ids, bad []string
	for _, u := range body.Instances {
		z, name := instanceName(u)
		if (z != "" && z != zone) || !members[name] {
			bad = append(bad, u)
			continue
		}
		ids = append(ids, name)
	}
	if len(bad) > 0 && !body.GetSkipInstancesOnValidationError() {
		writeError(w, &cloudsim.Error{Kind: cloudsim.KindInvalid, Code: "invalid",
			Message: fmt.Sprintf("The instance '%s' is not a member of the instance group manager '%s'", bad[0], g.Name)})
		return
	}
	fault := f.takeOpFault(OpDeleteInstances)
	if fault == nil && len(ids) > 0 {
		if _, err := f.Cloud.Terminate(g.Name, ids, true, OpDeleteInstances); err != nil {
			writeError(w, err)
			return
		}
	}
	writeProto(w, f.newOperation("compute.instanceGroupManagers.deleteInstances", zone, f.IGMURL(zone, g.Name), reqID, fault))
}

// ManagedState maps a cloudsim state to a managed instance's currentAction and the
// instance's status.
func ManagedState(s cloudsim.State) (action, status string) {
	switch s {
	case cloudsim.Pending:
		return "CREATING", "PROVISIONING"
	case cloudsim.Running:
		return "NONE", "RUNNING"
	case cloudsim.Terminating:
		return "DELETING", "STOPPING"
	}
	return "NONE", "TERMINATED"
}

func vmNumber(id string) uint64 {
	sum := sha256.Sum256([]byte(id))
	n, _ := strconv.ParseUint(hex.EncodeToString(sum[:6]), 16, 64)
	return n
}

func (f *Fake) listManaged(w http.ResponseWriter, r *http.Request) {
	if !f.call(w, OpListManaged) {
		return
	}
	g, ok := f.group(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	size := f.PageSize
	if m, err := strconv.Atoi(q.Get("maxResults")); err == nil && m > 0 && m < size {
		size = m
	}
	vms, _ := f.Cloud.VMs(g.Name)
	start := 0
	if tok := q.Get("pageToken"); tok != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(tok, "page-"))
		if err != nil || n < 0 || n > len(vms) {
			writeError(w, &cloudsim.Error{Kind: cloudsim.KindInvalid, Message: "Invalid value for field 'pageToken': " + tok})
			return
		}
		start = n
	}
	end := min(start+size, len(vms))
	resp := &computepb.InstanceGroupManagersListManagedInstancesResponse{}
	for _, v := range vms[start:end] {
		action, status := ManagedState(v.State)
		mi := &computepb.ManagedInstance{
			Instance: proto.String(f.InstanceURL(v.Zone, v.ID)), Name: proto.String(v.ID), Id: proto.Uint64(vmNumber(v.ID)),
			CurrentAction: proto.String(action),
		}
		if v.State != cloudsim.Pending || v.CreatedAt.Before(f.Cloud.Now()) {
			mi.InstanceStatus = proto.String(status)
		}
		resp.ManagedInstances = append(resp.ManagedInstances, mi)
	}
	if end < len(vms) {
		resp.NextPageToken = proto.String(fmt.Sprintf("page-%d", end))
	}
	writeProto(w, resp)
}

// ---- instances ----

// instance finds the live VM the request names in the request's zone.
func (f *Fake) instance(w http.ResponseWriter, r *http.Request) (cloudsim.VM, bool) {
	project, zone, name := r.PathValue("project"), r.PathValue("zone"), r.PathValue("name")
	v, err := f.Cloud.GetVM(name)
	if project != f.Project || err != nil || !v.State.Live() || v.Zone != zone {
		writeError(w, &cloudsim.Error{Kind: cloudsim.KindNotFound,
			Message: fmt.Sprintf("The resource 'projects/%s/zones/%s/instances/%s' was not found", project, zone, name)})
		return cloudsim.VM{}, false
	}
	return v, true
}

func (f *Fake) metadataOf(id string) *metadata {
	m, ok := f.meta[id]
	if !ok {
		m = &metadata{items: map[string]string{}}
		f.meta[id] = m
	}
	return m
}

func (f *Fake) getInstance(w http.ResponseWriter, r *http.Request) {
	if !f.call(w, OpGetInstance) {
		return
	}
	v, ok := f.instance(w, r)
	if !ok {
		return
	}
	_, status := ManagedState(v.State)
	items := map[string]string{MetaCreatedBy: f.IGMURL(v.Zone, v.Group)}
	if v.Endpoint.Port != 0 {
		items[MetaSSHPort] = strconv.Itoa(v.Endpoint.Port)
		items[MetaSSHHostKey] = v.Endpoint.HostKey
	}
	f.mu.Lock()
	md := f.metadataOf(v.ID)
	for k, val := range md.items {
		items[k] = val
	}
	fp := md.fingerprint
	f.mu.Unlock()
	keys := make([]string, 0, len(items))
	for k := range items {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	meta := &computepb.Metadata{Fingerprint: proto.String(fmt.Sprintf("fp-%d", fp)), Kind: proto.String("compute#metadata")}
	for _, k := range keys {
		meta.Items = append(meta.Items, &computepb.Items{Key: proto.String(k), Value: proto.String(items[k])})
	}
	labels := map[string]string{}
	for k, val := range v.Tags {
		labels[k] = val
	}
	in := &computepb.Instance{
		Name: proto.String(v.ID), Id: proto.Uint64(vmNumber(v.ID)), Kind: proto.String("compute#instance"),
		Zone: proto.String(f.zoneURL(v.Zone)), Status: proto.String(status), SelfLink: proto.String(f.InstanceURL(v.Zone, v.ID)),
		MachineType:       proto.String(f.zoneURL(v.Zone) + "/machineTypes/e2-medium"),
		CreationTimestamp: proto.String(v.CreatedAt.UTC().Format(time.RFC3339)),
		Metadata:          meta, Labels: labels,
	}
	if v.State != cloudsim.Terminating {
		nic := &computepb.NetworkInterface{Name: proto.String("nic0"), NetworkIP: proto.String(v.PrivateIP)}
		if v.State == cloudsim.Running {
			nic.AccessConfigs = []*computepb.AccessConfig{{Name: proto.String("External NAT"), Type: proto.String("ONE_TO_ONE_NAT"), NatIP: proto.String(v.PublicIP)}}
		}
		in.NetworkInterfaces = []*computepb.NetworkInterface{nic}
	}
	writeProto(w, in)
}

// AuthorizedKeyLines parses an `ssh-keys` metadata value: one "user:key [comment]" per
// line, as the guest environment reads it.
func AuthorizedKeyLines(value string) [][2]string {
	var out [][2]string
	for _, line := range strings.Split(value, "\n") {
		user, key, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && user != "" && key != "" {
			out = append(out, [2]string{user, key})
		}
	}
	return out
}

func (f *Fake) setMetadata(w http.ResponseWriter, r *http.Request) {
	if !f.call(w, OpSetMetadata) {
		return
	}
	v, ok := f.instance(w, r)
	if !ok {
		return
	}
	var body computepb.Metadata
	raw, _ := io.ReadAll(r.Body)
	if err := protojson.Unmarshal(raw, &body); err != nil {
		writeError(w, &cloudsim.Error{Kind: cloudsim.KindInvalid, Message: "Invalid JSON payload received: " + err.Error()})
		return
	}
	reqID := r.URL.Query().Get("requestId")
	if f.seen(reqID) {
		writeProto(w, f.newOperation("setMetadata", v.Zone, f.InstanceURL(v.Zone, v.ID), reqID, nil))
		return
	}
	f.mu.Lock()
	md := f.metadataOf(v.ID)
	if body.GetFingerprint() != fmt.Sprintf("fp-%d", md.fingerprint) {
		f.mu.Unlock()
		writeError(w, &cloudsim.Error{Kind: cloudsim.KindInvalid, Code: "conditionNotMet",
			Message: "Supplied fingerprint does not match current metadata fingerprint."})
		return
	}
	f.mu.Unlock()
	fault := f.takeOpFault(OpSetMetadata)
	if fault == nil {
		items := map[string]string{}
		for _, it := range body.Items {
			switch it.GetKey() {
			case MetaCreatedBy, MetaSSHPort, MetaSSHHostKey: // set by the platform
			default:
				items[it.GetKey()] = it.GetValue()
			}
		}
		for _, uk := range AuthorizedKeyLines(items[MetaSSHKeys]) {
			if err := f.Cloud.AuthorizeSSHKey(v.ID, uk[0], uk[1]); err != nil {
				writeError(w, err)
				return
			}
		}
		f.mu.Lock()
		md.items = items
		md.fingerprint++
		f.mu.Unlock()
	}
	writeProto(w, f.newOperation("setMetadata", v.Zone, f.InstanceURL(v.Zone, v.ID), reqID, fault))
}

// ---- Cloud Resource Manager and OAuth ----

func (f *Fake) testPermissions(w http.ResponseWriter, r *http.Request) {
	project, ok := strings.CutSuffix(r.PathValue("resource"), ":testIamPermissions")
	if !ok {
		writeError(w, &cloudsim.Error{Kind: cloudsim.KindNotFound, Message: "gcpfake does not implement " + r.URL.Path})
		return
	}
	if err := f.Cloud.Call(OpTestPermissions); err != nil {
		writeError(w, err)
		return
	}
	if project != f.Project {
		writeError(w, &cloudsim.Error{Kind: cloudsim.KindDenied, Message: fmt.Sprintf("The caller does not have permission on project %s", project)})
		return
	}
	var in struct {
		Permissions []string `json:"permissions"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		writeError(w, &cloudsim.Error{Kind: cloudsim.KindInvalid, Message: "Invalid JSON payload received: " + err.Error()})
		return
	}
	out := struct {
		Permissions []string `json:"permissions,omitempty"`
	}{}
	f.mu.Lock()
	for _, p := range in.Permissions {
		if !f.denied[p] {
			out.Permissions = append(out.Permissions, p)
		}
	}
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	_ = json.NewEncoder(w).Encode(out)
}

// token answers the OAuth token exchange of the service-account file WriteCredentials
// makes. It accepts any assertion: the fake checks no signatures.
func (f *Fake) token(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": "gcpfake-token", "token_type": "Bearer", "expires_in": 3600})
}
