// Package awsfake is a wire-level fake of the AWS APIs the aws plugin calls, backed by a
// cloudsim.Cloud. It is an httptest server that the unmodified aws-sdk-go-v2 clients talk
// to through BaseEndpoint (the plugin's `endpoint` key), so serialisation, pagination,
// retries and error decoding are all exercised:
//
//   - Auto Scaling (awsquery, Version=2011-01-01): DescribeAutoScalingGroups,
//     SetDesiredCapacity, TerminateInstanceInAutoScalingGroup, DescribePolicies;
//   - EC2 (ec2query, Version=2016-11-15): DescribeInstances, with InstanceId.N, the
//     tag:aws:autoscaling:groupName and instance-state-name filters, MaxResults/NextToken
//     pagination and DryRun;
//   - EC2 Instance Connect (JSON 1.1): SendSSHPublicKey, which authorizes the key on the
//     simulated VM's SSH server for 60 s of the cloud's clock.
//
// cloudsim states map to ASG lifecycle states and EC2 states as pending → Pending/pending,
// running → InService/running, terminating → Terminating/shutting-down, terminated →
// (not in the group)/terminated. A group's Settings map to NewInstancesProtectedFromScaleIn
// (ScaleInProtection), a suspended AZRebalance process (Rebalance false) and scaling
// policies (Policies). A VM with an SSH endpoint gets the tags flotilla:ssh-port and
// flotilla:ssh-host-key, which the plugin reads.
//
// Errors: a cloudsim KindThrottled becomes Auto Scaling "Throttling" or EC2
// "RequestLimitExceeded"; KindDenied becomes AccessDenied / UnauthorizedOperation /
// AccessDeniedException; KindNotFound and KindInvalid become ValidationError (Auto
// Scaling) or InvalidInstanceID.NotFound / InvalidParameterValue (EC2). An injected
// *cloudsim.Error with a Code is sent with that code.
package awsfake

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
)

// API versions the fake answers; a request for another version is refused loudly, so an
// SDK upgrade that changes them fails the wire-contract test.
const (
	AutoScalingVersion = "2011-01-01"
	EC2Version         = "2016-11-15"
	asNS               = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
	ec2NS              = "http://ec2.amazonaws.com/doc/2016-11-15/"
)

// Tags the fake puts on a VM served by an SSH backend; the plugin uses them when present.
const (
	TagSSHPort    = "flotilla:ssh-port"
	TagSSHHostKey = "flotilla:ssh-host-key"
	TagGroupName  = "aws:autoscaling:groupName"
)

// Families maps the fake's operations to throttling families for cloudsim.Options, the
// way AWS buckets its API rate limits: describes share one bucket, mutations another.
var Families = map[string]string{
	"DescribeAutoScalingGroups":           "autoscaling-describe",
	"DescribePolicies":                    "autoscaling-describe",
	"SetDesiredCapacity":                  "autoscaling-mutate",
	"TerminateInstanceInAutoScalingGroup": "autoscaling-mutate",
	"DescribeInstances":                   "ec2-describe",
	"SendSSHPublicKey":                    "instance-connect",
}

// NewID names VMs as EC2 does ("i-" and 17 hex digits).
func NewID(n int) string { return fmt.Sprintf("i-%017x", 0x0abc000000000000+n) }

// Fake is a running fake AWS endpoint.
type Fake struct {
	Cloud  *cloudsim.Cloud
	Server *httptest.Server
	// PageSize caps DescribeInstances pages (default 1000, AWS's own cap), so tests
	// can force pagination with few instances.
	PageSize int
	reqID    atomic.Int64
}

// New serves cloud over HTTP on 127.0.0.1. Close the Fake when done.
func New(cloud *cloudsim.Cloud) *Fake {
	f := &Fake{Cloud: cloud, PageSize: 1000}
	f.Server = httptest.NewServer(f)
	return f
}

// URL is the endpoint to give the SDK clients (BaseEndpoint) or the plugin (`endpoint`).
func (f *Fake) URL() string { return f.Server.URL }

// Close stops the server (not the cloud).
func (f *Fake) Close() { f.Server.Close() }

// WriteCredentials writes an AWS config and credentials file into dir for profile, with
// dummy keys and region, and returns their paths: plugin configurations then load them
// exactly as they would real ones.
func WriteCredentials(dir, profile, region string) (configFile, credentialsFile string, err error) {
	section := "profile " + profile
	if profile == "default" {
		section = "default"
	}
	configFile = filepath.Join(dir, "aws-config")
	credentialsFile = filepath.Join(dir, "aws-credentials")
	if err := os.WriteFile(configFile, fmt.Appendf(nil, "[%s]\nregion = %s\n", section, region), 0o600); err != nil {
		return "", "", fmt.Errorf("write AWS config file: %w", err)
	}
	creds := fmt.Sprintf("[%s]\naws_access_key_id = AKIAFAKEFAKEFAKEFAKE\naws_secret_access_key = fakefakefakefakefakefakefakefakefakefake\n", profile)
	if err := os.WriteFile(credentialsFile, []byte(creds), 0o600); err != nil {
		return "", "", fmt.Errorf("write AWS credentials file: %w", err)
	}
	return configFile, credentialsFile, nil
}

// PluginConfig writes credentials into dir and returns the plugin_config JSON that points
// the aws plugin at this fake for group.
func (f *Fake) PluginConfig(dir, group string) (json.RawMessage, error) {
	cfgFile, credFile, err := WriteCredentials(dir, "cloudsim", "us-east-1")
	if err != nil {
		return nil, err
	}
	return json.Marshal(map[string]string{
		"name": group, "profile": "cloudsim", "config_file": cfgFile, "credentials_file": credFile,
		"endpoint": f.URL(),
	})
}

// ServeHTTP routes on the protocol: JSON 1.1 by X-Amz-Target, query by Action/Version.
func (f *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if target := r.Header.Get("X-Amz-Target"); target != "" {
		f.serveJSON(w, r, target)
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form: "+err.Error(), http.StatusBadRequest)
		return
	}
	action, version := r.PostForm.Get("Action"), r.PostForm.Get("Version")
	switch version {
	case AutoScalingVersion:
		f.serveAutoScaling(w, action, r.PostForm)
	case EC2Version:
		f.serveEC2(w, action, r.PostForm)
	default:
		http.Error(w, fmt.Sprintf("awsfake: unknown API version %q (action %q)", version, action), http.StatusBadRequest)
	}
}

func (f *Fake) requestID() string {
	return fmt.Sprintf("00000000-0000-4000-8000-%012d", f.reqID.Add(1))
}

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// members returns the values of a query list: prefix.member.1, prefix.member.2, … (or
// prefix.1, … for EC2).
func members(form map[string][]string, prefix string) []string {
	var out []string
	for i := 1; ; i++ {
		v, ok := form[prefix+"."+strconv.Itoa(i)]
		if !ok || len(v) == 0 {
			return out
		}
		out = append(out, v[0])
	}
}

func get(form map[string][]string, key string) string {
	if v := form[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// ---- Auto Scaling ----

func (f *Fake) asError(w http.ResponseWriter, err error) {
	code, status := "InternalFailure", http.StatusInternalServerError
	var ce *cloudsim.Error
	msg := err.Error()
	if e, ok := err.(*cloudsim.Error); ok {
		ce = e
		msg = e.Message
		switch e.Kind {
		case cloudsim.KindThrottled:
			code, status = "Throttling", http.StatusBadRequest
		case cloudsim.KindDenied:
			code, status = "AccessDenied", http.StatusForbidden
		case cloudsim.KindNotFound, cloudsim.KindInvalid:
			code, status = "ValidationError", http.StatusBadRequest
		case cloudsim.KindCapacity:
			code, status = "ScalingActivityInProgress", http.StatusBadRequest
		}
		if ce.Code != "" {
			code = ce.Code
		}
	}
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<ErrorResponse xmlns="%s"><Error><Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error><RequestId>%s</RequestId></ErrorResponse>`,
		asNS, esc(code), esc(msg), f.requestID())
}

func (f *Fake) asReply(w http.ResponseWriter, action, result string) {
	w.Header().Set("Content-Type", "text/xml")
	res := ""
	if result != "" {
		res = fmt.Sprintf("<%sResult>%s</%sResult>", action, result, action)
	}
	fmt.Fprintf(w, `<%sResponse xmlns="%s">%s<ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata></%sResponse>`,
		action, asNS, res, f.requestID(), action)
}

func lifecycle(s cloudsim.State) string {
	switch s {
	case cloudsim.Pending:
		return "Pending"
	case cloudsim.Running:
		return "InService"
	case cloudsim.Terminating:
		return "Terminating"
	}
	return "Terminated"
}

func (f *Fake) serveAutoScaling(w http.ResponseWriter, action string, form map[string][]string) {
	if _, known := Families[action]; !known {
		f.asError(w, &cloudsim.Error{Kind: cloudsim.KindInvalid, Code: "InvalidAction", Message: "awsfake does not implement " + action})
		return
	}
	if err := f.Cloud.Call(action); err != nil {
		f.asError(w, err)
		return
	}
	switch action {
	case "DescribeAutoScalingGroups":
		names := members(form, "AutoScalingGroupNames.member")
		var b strings.Builder
		b.WriteString("<AutoScalingGroups>")
		for _, name := range names {
			g, err := f.Cloud.GetGroup(name)
			if err != nil {
				continue // AWS lists only the groups that exist
			}
			vms, _ := f.Cloud.VMs(name)
			fmt.Fprintf(&b, "<member><AutoScalingGroupName>%s</AutoScalingGroupName><AutoScalingGroupARN>arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:0000:autoScalingGroupName/%s</AutoScalingGroupARN>", esc(g.Name), esc(g.Name))
			fmt.Fprintf(&b, "<MinSize>%d</MinSize><MaxSize>%d</MaxSize><DesiredCapacity>%d</DesiredCapacity><DefaultCooldown>300</DefaultCooldown>", g.Min, g.Max, g.Desired)
			fmt.Fprintf(&b, "<NewInstancesProtectedFromScaleIn>%t</NewInstancesProtectedFromScaleIn><HealthCheckType>EC2</HealthCheckType><CreatedTime>2026-01-01T00:00:00Z</CreatedTime>", g.Settings.ScaleInProtection)
			b.WriteString("<AvailabilityZones>")
			for _, z := range g.Settings.Zones {
				fmt.Fprintf(&b, "<member>%s</member>", esc(z))
			}
			b.WriteString("</AvailabilityZones><SuspendedProcesses>")
			if !g.Settings.Rebalance {
				b.WriteString("<member><ProcessName>AZRebalance</ProcessName><SuspensionReason>User suspended</SuspensionReason></member>")
			}
			b.WriteString("</SuspendedProcesses><Instances>")
			for _, v := range vms {
				fmt.Fprintf(&b, "<member><InstanceId>%s</InstanceId><InstanceType>t3.micro</InstanceType><AvailabilityZone>%s</AvailabilityZone><LifecycleState>%s</LifecycleState><HealthStatus>Healthy</HealthStatus><ProtectedFromScaleIn>%t</ProtectedFromScaleIn></member>",
					v.ID, esc(v.Zone), lifecycle(v.State), v.Protected)
			}
			b.WriteString("</Instances>")
			if g.LastError != "" {
				fmt.Fprintf(&b, "<Status>%s</Status>", esc(g.LastError))
			}
			b.WriteString("</member>")
		}
		b.WriteString("</AutoScalingGroups>")
		f.asReply(w, action, b.String())
	case "SetDesiredCapacity":
		n, err := strconv.Atoi(get(form, "DesiredCapacity"))
		if err != nil {
			f.asError(w, &cloudsim.Error{Kind: cloudsim.KindInvalid, Message: "DesiredCapacity: " + err.Error()})
			return
		}
		if err := f.Cloud.SetDesired(get(form, "AutoScalingGroupName"), n); err != nil {
			f.asError(w, err)
			return
		}
		f.asReply(w, action, "")
	case "TerminateInstanceInAutoScalingGroup":
		id := get(form, "InstanceId")
		vm, err := f.Cloud.GetVM(id)
		if err != nil || !vm.State.Live() {
			f.asError(w, &cloudsim.Error{Kind: cloudsim.KindInvalid, Message: "Instance Id not found - No managed instance found for instance ID: " + id})
			return
		}
		decrement := get(form, "ShouldDecrementDesiredCapacity") == "true"
		if _, err := f.Cloud.Terminate(vm.Group, []string{id}, decrement, "TerminateInstanceInAutoScalingGroup"); err != nil {
			f.asError(w, err)
			return
		}
		desc := "Terminating EC2 instance: " + id
		f.asReply(w, action, fmt.Sprintf("<Activity><ActivityId>%s</ActivityId><AutoScalingGroupName>%s</AutoScalingGroupName><Description>%s</Description><Cause>At %s an instance was taken out of service in response to a user request.</Cause><StartTime>%s</StartTime><StatusCode>InProgress</StatusCode><Progress>0</Progress></Activity>",
			f.requestID(), esc(vm.Group), esc(desc), f.Cloud.Now().UTC().Format(time.RFC3339), f.Cloud.Now().UTC().Format(time.RFC3339)))
	case "DescribePolicies":
		g, err := f.Cloud.GetGroup(get(form, "AutoScalingGroupName"))
		var b strings.Builder
		b.WriteString("<ScalingPolicies>")
		if err == nil {
			for _, p := range g.Settings.Policies {
				fmt.Fprintf(&b, "<member><AutoScalingGroupName>%s</AutoScalingGroupName><PolicyName>%s</PolicyName><PolicyType>TargetTrackingScaling</PolicyType><Enabled>true</Enabled></member>", esc(g.Name), esc(p))
			}
		}
		b.WriteString("</ScalingPolicies>")
		f.asReply(w, action, b.String())
	}
}

// ---- EC2 ----

func (f *Fake) ec2Error(w http.ResponseWriter, err error) {
	code, status := "InternalError", http.StatusInternalServerError
	msg := err.Error()
	if e, ok := err.(*cloudsim.Error); ok {
		msg = e.Message
		switch e.Kind {
		case cloudsim.KindThrottled:
			code, status = "RequestLimitExceeded", http.StatusServiceUnavailable
		case cloudsim.KindDenied:
			code, status = "UnauthorizedOperation", http.StatusForbidden
		case cloudsim.KindNotFound:
			code, status = "InvalidInstanceID.NotFound", http.StatusBadRequest
		case cloudsim.KindInvalid:
			code, status = "InvalidParameterValue", http.StatusBadRequest
		case cloudsim.KindCapacity:
			code, status = "InsufficientInstanceCapacity", http.StatusInternalServerError
		}
		if e.Code != "" {
			code = e.Code
		}
		if code == "DryRunOperation" {
			status = http.StatusPreconditionFailed
		}
	}
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>%s</Code><Message>%s</Message></Error></Errors><RequestID>%s</RequestID></Response>`,
		esc(code), esc(msg), f.requestID())
}

func ec2State(s cloudsim.State) (int, string) {
	switch s {
	case cloudsim.Pending:
		return 0, "pending"
	case cloudsim.Running:
		return 16, "running"
	case cloudsim.Terminating:
		return 32, "shutting-down"
	}
	return 48, "terminated"
}

// filters returns the EC2 Filter.N.Name / Filter.N.Value.M parameters.
func filters(form map[string][]string) map[string][]string {
	out := map[string][]string{}
	for i := 1; ; i++ {
		name := get(form, fmt.Sprintf("Filter.%d.Name", i))
		if name == "" {
			return out
		}
		out[name] = members(form, fmt.Sprintf("Filter.%d.Value", i))
	}
}

func (f *Fake) serveEC2(w http.ResponseWriter, action string, form map[string][]string) {
	if action != "DescribeInstances" {
		f.ec2Error(w, &cloudsim.Error{Kind: cloudsim.KindInvalid, Code: "InvalidAction", Message: "awsfake does not implement " + action})
		return
	}
	if err := f.Cloud.Call(action); err != nil {
		f.ec2Error(w, err)
		return
	}
	if get(form, "DryRun") == "true" {
		f.ec2Error(w, &cloudsim.Error{Kind: cloudsim.KindInvalid, Code: "DryRunOperation", Message: "Request would have succeeded, but DryRun flag is set."})
		return
	}
	ids := members(form, "InstanceId")
	flt := filters(form)
	var vms []cloudsim.VM
	if len(ids) > 0 {
		for _, id := range ids {
			vm, err := f.Cloud.GetVM(id)
			if err != nil {
				f.ec2Error(w, &cloudsim.Error{Kind: cloudsim.KindNotFound, Message: fmt.Sprintf("The instance ID '%s' does not exist", id)})
				return
			}
			vms = append(vms, vm)
		}
	} else {
		vms = f.Cloud.AllVMs()
	}
	var sel []cloudsim.VM
	for _, vm := range vms {
		if g, ok := flt["tag:"+TagGroupName]; ok && !slices.Contains(g, vm.Group) {
			continue
		}
		if st, ok := flt["instance-state-name"]; ok {
			if _, name := ec2State(vm.State); !slices.Contains(st, name) {
				continue
			}
		}
		sel = append(sel, vm)
	}
	size := f.PageSize
	if m, err := strconv.Atoi(get(form, "MaxResults")); err == nil && m > 0 && m < size {
		size = m
	}
	start := 0
	if tok := get(form, "NextToken"); tok != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(tok, "page-"))
		if err != nil || n < 0 || n > len(sel) {
			f.ec2Error(w, &cloudsim.Error{Kind: cloudsim.KindInvalid, Code: "InvalidParameterValue", Message: "bad NextToken " + tok})
			return
		}
		start = n
	}
	end := min(start+size, len(sel))
	var b strings.Builder
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?><DescribeInstancesResponse xmlns="%s"><requestId>%s</requestId><reservationSet>`, ec2NS, f.requestID())
	for _, vm := range sel[start:end] {
		code, name := ec2State(vm.State)
		fmt.Fprintf(&b, "<item><reservationId>r-%s</reservationId><ownerId>123456789012</ownerId><instancesSet><item><instanceId>%s</instanceId><imageId>ami-0cloudsim</imageId><instanceState><code>%d</code><name>%s</name></instanceState>",
			strings.TrimPrefix(vm.ID, "i-"), vm.ID, code, name)
		fmt.Fprintf(&b, "<instanceType>t3.micro</instanceType><launchTime>%s</launchTime><placement><availabilityZone>%s</availabilityZone></placement>",
			vm.CreatedAt.UTC().Format(time.RFC3339), esc(vm.Zone))
		if vm.State != cloudsim.Terminated {
			fmt.Fprintf(&b, "<privateIpAddress>%s</privateIpAddress>", vm.PrivateIP)
			if vm.State == cloudsim.Running {
				fmt.Fprintf(&b, "<ipAddress>%s</ipAddress>", vm.PublicIP)
			}
		}
		tags := map[string]string{TagGroupName: vm.Group}
		for k, v := range vm.Tags {
			tags[k] = v
		}
		if vm.Endpoint.Port != 0 {
			tags[TagSSHPort] = strconv.Itoa(vm.Endpoint.Port)
			tags[TagSSHHostKey] = vm.Endpoint.HostKey
		}
		keys := make([]string, 0, len(tags))
		for k := range tags {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b.WriteString("<tagSet>")
		for _, k := range keys {
			fmt.Fprintf(&b, "<item><key>%s</key><value>%s</value></item>", esc(k), esc(tags[k]))
		}
		b.WriteString("</tagSet></item></instancesSet></item>")
	}
	b.WriteString("</reservationSet>")
	if end < len(sel) {
		fmt.Fprintf(&b, "<nextToken>page-%d</nextToken>", end)
	}
	b.WriteString("</DescribeInstancesResponse>")
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("Content-Length", strconv.Itoa(b.Len()))
	_, _ = io.WriteString(w, b.String())
}

// ---- EC2 Instance Connect (JSON 1.1) ----

func (f *Fake) serveJSON(w http.ResponseWriter, r *http.Request, target string) {
	writeErr := func(status int, code, msg string) {
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.Header().Set("X-Amzn-Errortype", code)
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]string{"__type": code, "message": msg})
	}
	if target != "AWSEC2InstanceConnectService.SendSSHPublicKey" {
		writeErr(http.StatusBadRequest, "UnknownOperationException", "awsfake does not implement "+target)
		return
	}
	var in struct {
		InstanceID     string `json:"InstanceId"`
		InstanceOSUser string `json:"InstanceOSUser"`
		SSHPublicKey   string `json:"SSHPublicKey"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		writeErr(http.StatusBadRequest, "SerializationException", err.Error())
		return
	}
	if err := f.Cloud.Call("SendSSHPublicKey"); err != nil {
		code, status := "ServiceException", http.StatusInternalServerError
		if e, ok := err.(*cloudsim.Error); ok {
			switch e.Kind {
			case cloudsim.KindThrottled:
				code, status = "ThrottlingException", http.StatusBadRequest
			case cloudsim.KindDenied:
				code, status = "AccessDeniedException", http.StatusForbidden
			}
			if e.Code != "" {
				code = e.Code
			}
		}
		writeErr(status, code, err.Error())
		return
	}
	if in.InstanceOSUser == "" || in.SSHPublicKey == "" {
		writeErr(http.StatusBadRequest, "InvalidArgsException", "InstanceOSUser and SSHPublicKey are required")
		return
	}
	if err := f.Cloud.PushSSHKey(in.InstanceID, in.InstanceOSUser, in.SSHPublicKey); err != nil {
		if cloudsim.KindOf(err) == cloudsim.KindNotFound {
			writeErr(http.StatusBadRequest, "EC2InstanceNotFoundException", err.Error())
		} else {
			writeErr(http.StatusBadRequest, "EC2InstanceStateInvalidException", err.Error())
		}
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	_ = json.NewEncoder(w).Encode(map[string]any{"RequestId": f.requestID(), "Success": true})
}
