package gcpfake

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	compute "cloud.google.com/go/compute/apiv1"
	"cloud.google.com/go/compute/apiv1/computepb"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/api/cloudresourcemanager/v1"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
	"google.golang.org/protobuf/proto"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
)

type clients struct {
	igm  *compute.InstanceGroupManagersClient
	inst *compute.InstancesClient
	ops  *compute.ZoneOperationsClient
	crm  *cloudresourcemanager.Service
}

func newClients(t *testing.T, f *Fake) clients {
	t.Helper()
	ctx := context.Background()
	opts := []option.ClientOption{option.WithEndpoint(f.URL()), option.WithoutAuthentication()}
	var c clients
	var err error
	if c.igm, err = compute.NewInstanceGroupManagersRESTClient(ctx, opts...); err != nil {
		t.Fatal(err)
	}
	if c.inst, err = compute.NewInstancesRESTClient(ctx, opts...); err != nil {
		t.Fatal(err)
	}
	if c.ops, err = compute.NewZoneOperationsRESTClient(ctx, opts...); err != nil {
		t.Fatal(err)
	}
	if c.crm, err = cloudresourcemanager.NewService(ctx, option.WithEndpoint(f.URL()+"/"), option.WithoutAuthentication()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.igm.Close(); c.inst.Close(); c.ops.Close() })
	return c
}

func apiError(err error) (int, string) {
	var ge *googleapi.Error
	if !errors.As(err, &ge) {
		return 0, ""
	}
	r := ""
	if len(ge.Errors) > 0 {
		r = ge.Errors[0].Reason
	}
	return ge.Code, r
}

// noRetry keeps the SDK from retrying, so every answer is seen as sent.
var noRetry = gax.WithRetry(func() gax.Retryer { return nil })

// TestWireContract drives every operation the plugin uses through the pinned SDK
// clients and checks the decoded values: if an SDK upgrade changes the protocol, this
// is the test that fails.
func TestWireContract(t *testing.T) {
	ctx := context.Background()
	const p, z = "flotilla-test", DefaultZone
	clock := cloudsim.NewVirtualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	cloud := cloudsim.New(cloudsim.Options{Clock: clock, BootDelay: cloudsim.Fixed(time.Minute), NewID: NewID, Families: Families})
	for _, g := range []cloudsim.Group{
		{Name: "ci", Max: 10, Settings: cloudsim.Settings{Zones: []string{z}, Policies: []string{"as"}, Rebalance: true}},
		{Name: "regional", Max: 10, Settings: cloudsim.Settings{Zones: []string{z, "europe-west1-c"}}},
	} {
		if err := cloud.CreateGroup(g); err != nil {
			t.Fatal(err)
		}
	}
	f := New(cloud)
	defer f.Close()
	f.PageSize = 2
	f.OperationPolls = 1
	c := newClients(t, f)

	// resize → RUNNING operation, DONE at the second poll; the SDK's own Wait works.
	op, err := c.igm.Resize(ctx, &computepb.ResizeInstanceGroupManagerRequest{Project: p, Zone: z, InstanceGroupManager: "ci", Size: 3, RequestId: proto.String("req-1")})
	if err != nil {
		t.Fatalf("resize: %v", err)
	}
	if op.Done() || !strings.Contains(op.Name(), "resize") {
		t.Errorf("resize operation %s done=%v; want a RUNNING resize operation", op.Name(), op.Done())
	}
	w, err := c.ops.Wait(ctx, &computepb.WaitZoneOperationRequest{Project: p, Zone: z, Operation: op.Name()})
	if err != nil || w.GetStatus() != computepb.Operation_RUNNING {
		t.Errorf("first wait = %v, %v; want RUNNING", w.GetStatus(), err)
	}
	if err := op.Wait(ctx); err != nil || !op.Done() {
		t.Errorf("Operation.Wait = %v, done %v", err, op.Done())
	}
	f.OperationPolls = 0 // Operation.Wait sleeps a second after a RUNNING poll: no more of those
	// The same requestId again is the same operation, not a second resize.
	op2, err := c.igm.Resize(ctx, &computepb.ResizeInstanceGroupManagerRequest{Project: p, Zone: z, InstanceGroupManager: "ci", Size: 5, RequestId: proto.String("req-1")})
	if err != nil || op2.Name() != op.Name() {
		t.Errorf("retried resize = %v, %v; want operation %s", op2.Name(), err, op.Name())
	}

	m, err := c.igm.Get(ctx, &computepb.GetInstanceGroupManagerRequest{Project: p, Zone: z, InstanceGroupManager: "ci"})
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if m.GetTargetSize() != 3 || !strings.HasSuffix(m.GetZone(), "/zones/"+z) || !strings.HasSuffix(m.GetStatus().GetAutoscaler(), "/autoscalers/as") ||
		m.GetUpdatePolicy().GetType() != "PROACTIVE" || m.GetCurrentActions().GetCreating() != 3 {
		t.Errorf("get = %v", m)
	}

	// listManagedInstances pages through all three.
	list := func() []*computepb.ManagedInstance {
		it := c.igm.ListManagedInstances(ctx, &computepb.ListManagedInstancesInstanceGroupManagersRequest{Project: p, Zone: z, InstanceGroupManager: "ci"})
		var out []*computepb.ManagedInstance
		for {
			mi, err := it.Next()
			if errors.Is(err, iterator.Done) {
				return out
			}
			if err != nil {
				t.Fatalf("listManagedInstances: %v", err)
			}
			out = append(out, mi)
		}
	}
	cloud.ResetCalls()
	mis := list()
	if len(mis) != 3 || cloud.Calls()[OpListManaged] != 2 {
		t.Fatalf("listed %d instances in %d pages, want 3 in 2", len(mis), cloud.Calls()[OpListManaged])
	}
	for _, mi := range mis {
		if mi.GetCurrentAction() != "CREATING" || !strings.HasSuffix(mi.GetInstance(), "/zones/"+z+"/instances/"+mi.GetName()) {
			t.Errorf("pending instance listed as %v", mi)
		}
	}
	clock.Advance(time.Minute)
	for _, mi := range list() {
		if mi.GetCurrentAction() != "NONE" || mi.GetInstanceStatus() != "RUNNING" {
			t.Errorf("booted instance listed as %s/%s", mi.GetCurrentAction(), mi.GetInstanceStatus())
		}
	}

	// instances.get: addresses and the MIG's created-by.
	name := mis[0].GetName()
	in, err := c.inst.Get(ctx, &computepb.GetInstanceRequest{Project: p, Zone: z, Instance: name})
	if err != nil {
		t.Fatalf("instances.get: %v", err)
	}
	nic := in.GetNetworkInterfaces()[0]
	var createdBy string
	for _, it := range in.GetMetadata().GetItems() {
		if it.GetKey() == MetaCreatedBy {
			createdBy = it.GetValue()
		}
	}
	if in.GetStatus() != "RUNNING" || !strings.HasPrefix(nic.GetNetworkIP(), "10.") || nic.GetAccessConfigs()[0].GetNatIP() == "" ||
		!strings.HasSuffix(createdBy, "/instanceGroupManagers/ci") {
		t.Errorf("instance = %v", in)
	}

	// setMetadata: the fingerprint guards concurrent changes.
	md := &computepb.Metadata{Fingerprint: in.GetMetadata().Fingerprint, Items: []*computepb.Items{{Key: proto.String(MetaSSHKeys), Value: proto.String("runner:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKE flotilla")}}}
	op, err = c.inst.SetMetadata(ctx, &computepb.SetMetadataInstanceRequest{Project: p, Zone: z, Instance: name, MetadataResource: md})
	if err != nil {
		t.Fatalf("setMetadata: %v", err)
	}
	if err := op.Wait(ctx); err != nil {
		t.Errorf("setMetadata wait: %v", err)
	}
	_, err = c.inst.SetMetadata(ctx, &computepb.SetMetadataInstanceRequest{Project: p, Zone: z, Instance: name, MetadataResource: md}, noRetry)
	if code, r := apiError(err); code != 400 || r != "conditionNotMet" {
		t.Errorf("setMetadata with a stale fingerprint = %v; want 400 conditionNotMet", err)
	}

	// deleteInstances: without skipping, a stranger fails the whole request.
	del := func(skip bool, names ...string) (*compute.Operation, error) {
		var urls []string
		for _, n := range names {
			urls = append(urls, "zones/"+z+"/instances/"+n)
		}
		return c.igm.DeleteInstances(ctx, &computepb.DeleteInstancesInstanceGroupManagerRequest{Project: p, Zone: z, InstanceGroupManager: "ci",
			InstanceGroupManagersDeleteInstancesRequestResource: &computepb.InstanceGroupManagersDeleteInstancesRequest{Instances: urls, SkipInstancesOnValidationError: proto.Bool(skip)}}, noRetry)
	}
	if _, err := del(false, name, "flotilla-99999"); err == nil {
		t.Error("deleteInstances naming a stranger without skipping succeeded")
	}
	if vm, _ := cloud.GetVM(name); vm.State != cloudsim.Running {
		t.Errorf("a refused deleteInstances touched %s: %s", name, vm.State)
	}
	op, err = del(true, name, "flotilla-99999")
	if err != nil {
		t.Fatalf("deleteInstances: %v", err)
	}
	if err := op.Wait(ctx); err != nil {
		t.Errorf("deleteInstances wait: %v", err)
	}
	if g, _ := cloud.GetGroup("ci"); g.Desired != 2 {
		t.Errorf("targetSize after deleteInstances = %d, want 2", g.Desired)
	}

	// A failed operation: DONE with an error, which Operation.Wait returns.
	f.FailOperations(OpResize, 1, &cloudsim.Error{Kind: cloudsim.KindCapacity, Message: "no resources"})
	op, err = c.igm.Resize(ctx, &computepb.ResizeInstanceGroupManagerRequest{Project: p, Zone: z, InstanceGroupManager: "ci", Size: 4})
	if err != nil {
		t.Fatalf("resize: %v", err)
	}
	if err := op.Wait(ctx); err == nil || !strings.Contains(err.Error(), "ZONE_RESOURCE_POOL_EXHAUSTED") {
		t.Errorf("failed operation Wait = %v; want the operation's error", err)
	}
	if g, _ := cloud.GetGroup("ci"); g.Desired != 2 {
		t.Errorf("a failed resize changed targetSize to %d", g.Desired)
	}

	// Errors: 429 rateLimitExceeded, 404 for a regional group, 403 for a denied permission.
	cloud.Inject(OpListManaged, 1, &cloudsim.Error{Kind: cloudsim.KindThrottled, Message: "Rate Limit Exceeded"})
	_, err = c.igm.ListManagedInstances(ctx, &computepb.ListManagedInstancesInstanceGroupManagersRequest{Project: p, Zone: z, InstanceGroupManager: "ci"}).Next()
	if code, r := apiError(err); code != 429 || r != "rateLimitExceeded" {
		t.Errorf("throttled list = %v; want 429 rateLimitExceeded", err)
	}
	_, err = c.igm.Get(ctx, &computepb.GetInstanceGroupManagerRequest{Project: p, Zone: z, InstanceGroupManager: "regional"})
	if code, _ := apiError(err); code != 404 {
		t.Errorf("regional group at the zonal endpoint = %v; want 404", err)
	}
	f.Deny("compute.instanceGroupManagers.update")
	_, err = c.igm.Resize(ctx, &computepb.ResizeInstanceGroupManagerRequest{Project: p, Zone: z, InstanceGroupManager: "ci", Size: 1}, noRetry)
	if code, r := apiError(err); code != 403 || r != "forbidden" {
		t.Errorf("denied resize = %v; want 403 forbidden", err)
	}

	// testIamPermissions returns the granted subset.
	resp, err := c.crm.Projects.TestIamPermissions(p, &cloudresourcemanager.TestIamPermissionsRequest{
		Permissions: []string{"compute.instances.get", "compute.instanceGroupManagers.update"}}).Do()
	if err != nil || !slices.Equal(resp.Permissions, []string{"compute.instances.get"}) {
		t.Errorf("testIamPermissions = %v, %v", resp, err)
	}
	if err := cloud.Check(); err != nil {
		t.Error(err)
	}
}

// TestKeysFromMetadata: the ssh-keys lines become keys the VM's SSH server accepts.
func TestKeysFromMetadata(t *testing.T) {
	got := AuthorizedKeyLines("runner:ssh-ed25519 AAAA one\n\n bad line\nroot:ssh-rsa BBBB\n")
	want := [][2]string{{"runner", "ssh-ed25519 AAAA one"}, {"root", "ssh-rsa BBBB"}}
	if !slices.Equal(got, want) {
		t.Errorf("AuthorizedKeyLines = %q, want %q", got, want)
	}
}
