package config

import (
	"fmt"
	"strings"
	"time"
)

// Config is a whole config.toml: the global settings and one Runner per [[runners]].
type Config struct {
	// Concurrent caps the jobs running at once across all runners (GitLab default 1).
	Concurrent int `toml:"concurrent"`
	// CheckInterval is the job-request poll period in seconds (0 = 3s).
	CheckInterval int `toml:"check_interval"`
	// ListenAddress is host:port of the metrics/debug HTTP server; empty = off.
	ListenAddress string `toml:"listen_address"`
	// WebToken guards the operator's page that listen_address serves at / (a Flotilla
	// addition): required there when set, and required to serve the page at all on an
	// address that is not a loopback one. See docs/operator.md.
	WebToken string `toml:"web_token"`
	// LogLevel is debug, info, warn, error, fatal or panic.
	LogLevel string `toml:"log_level"`
	// LogFormat is runner, text or json.
	LogFormat string `toml:"log_format"`
	// ShutdownTimeout is seconds to wait for jobs at shutdown.
	ShutdownTimeout int `toml:"shutdown_timeout"`
	// ConnectionMaxAge bounds the lifetime of TLS keep-alive connections to GitLab.
	ConnectionMaxAge Duration `toml:"connection_max_age"`
	// SentryDSN is accepted for compatibility and not used.
	SentryDSN string `toml:"sentry_dsn"`
	// SessionServer is accepted for compatibility (interactive web terminals) and not used.
	SessionServer map[string]any `toml:"session_server"`
	// Runners is one entry per [[runners]] table, in file order.
	Runners []Runner `toml:"runners"`
	// Fleeting is where plugins come from and whom to trust (a Flotilla addition; see
	// docs/plugins-install.md).
	Fleeting Fleeting `toml:"fleeting"`
	// Coordination, when set, lets several `runner run` processes share each pool
	// through etcd (a Flotilla addition; see docs/ha.md). Without it every process
	// owns its pools alone, with the inventory in a local file.
	Coordination *Coordination `toml:"coordination"`

	// Path is the file the configuration was loaded from ("" when parsed from bytes).
	Path string `toml:"-"`
}

// Runner is one [[runners]] entry: a GitLab registration plus how its jobs are executed.
type Runner struct {
	// Name, URL, ID and Token identify the registration with GitLab; Token is the
	// runner authentication token (glrt-…).
	Name  string `toml:"name"`
	URL   string `toml:"url"`
	ID    int64  `toml:"id"`
	Token string `toml:"token"`
	// TokenObtainedAt and TokenExpiresAt are TOML datetimes written at registration.
	TokenObtainedAt any    `toml:"token_obtained_at"`
	TokenExpiresAt  any    `toml:"token_expires_at"`
	TLSCAFile       string `toml:"tls-ca-file"`
	TLSCertFile     string `toml:"tls-cert-file"`
	TLSKeyFile      string `toml:"tls-key-file"`
	// Executor is "instance" or "docker-autoscaler"; GitLab's others load with a warning.
	Executor string `toml:"executor"`
	// Shell runs the job script: bash (default), sh, pwsh or powershell.
	Shell string `toml:"shell"`
	// Limit caps this runner's concurrent jobs; 0 = no cap of its own.
	Limit int `toml:"limit"`
	// BuildsDir and CacheDir are where sources and caches live on the instance.
	BuildsDir string `toml:"builds_dir"`
	CacheDir  string `toml:"cache_dir"`
	CloneURL  string `toml:"clone_url"`
	// Environment is KEY=VALUE pairs added to every job.
	Environment []string `toml:"environment"`
	// RequestConcurrency caps concurrent job requests to GitLab (0 = 1).
	RequestConcurrency int `toml:"request_concurrency"`
	// The remaining keys are GitLab Runner's; accepted, acted on by the job runtime
	// where it supports them.
	OutputLimit            int      `toml:"output_limit"`
	PreGetSourcesScript    string   `toml:"pre_get_sources_script"`
	PostGetSourcesScript   string   `toml:"post_get_sources_script"`
	PreBuildScript         string   `toml:"pre_build_script"`
	PostBuildScript        string   `toml:"post_build_script"`
	DebugTraceDisabled     bool     `toml:"debug_trace_disabled"`
	UnhealthyRequestsLimit int      `toml:"unhealthy_requests_limit"`
	UnhealthyInterval      Duration `toml:"unhealthy_interval"`

	// Autoscaler is [runners.autoscaler]; nil when the table is absent.
	Autoscaler *Autoscaler `toml:"autoscaler"`
	// Docker is [runners.docker], used by the docker-autoscaler executor.
	Docker Docker `toml:"docker"`
	// Instance is [runners.instance], used by the instance executor.
	Instance Instance `toml:"instance"`
	// Machine is [runners.machine] of a docker+machine runner; only `runner config
	// migrate` reads it. Nil when absent.
	Machine *Machine `toml:"machine"`

	// FeatureFlags is [runners.feature_flags]: FF_* name → enabled.
	FeatureFlags map[string]bool `toml:"feature_flags"`
	// Cache is [runners.cache]: where job caches are kept. Nil (or no Type) keeps them
	// on the runner host, under cache_dir.
	Cache *Cache `toml:"cache"`
	// The following GitLab tables are accepted unchanged so that existing files load;
	// Flotilla does not act on them.
	CustomBuildDir map[string]any `toml:"custom_build_dir"`
	Kubernetes     map[string]any `toml:"kubernetes"`
	Custom         map[string]any `toml:"custom"`
	SSH            map[string]any `toml:"ssh"`
	Parallels      map[string]any `toml:"parallels"`
	VirtualBox     map[string]any `toml:"virtualbox"`
	Referees       map[string]any `toml:"referees"`
}

// Autoscaler is [runners.autoscaler]: the plugin, its instance group and the taskscaler
// settings. Zero values mean "default" (see the *OrDefault accessors).
type Autoscaler struct {
	Plugin                      string         `toml:"plugin"`
	PluginConfig                map[string]any `toml:"plugin_config"`
	CapacityPerInstance         int            `toml:"capacity_per_instance"`
	MaxUseCount                 int            `toml:"max_use_count"`
	MaxInstances                int            `toml:"max_instances"`
	DeleteInstancesOnShutdown   bool           `toml:"delete_instances_on_shutdown"`
	InstanceReadyCommand        string         `toml:"instance_ready_command"`
	InstanceAcquireTimeout      Duration       `toml:"instance_acquire_timeout"`
	UpdateInterval              Duration       `toml:"update_interval"`
	UpdateIntervalWhenExpecting Duration       `toml:"update_interval_when_expecting"`
	DeletionRetryInterval       Duration       `toml:"deletion_retry_interval"`
	ShutdownDeletionInterval    Duration       `toml:"shutdown_deletion_interval"`
	ShutdownDeletionRetries     int            `toml:"shutdown_deletion_retries"`
	FailureThreshold            int            `toml:"failure_threshold"`
	LogInternalIP               bool           `toml:"log_internal_ip"`
	LogExternalIP               bool           `toml:"log_external_ip"`
	// ReservationThrottling is nil when unset, which means on.
	ReservationThrottling *bool `toml:"reservation_throttling"`

	InstanceOperationTimeBuckets []float64 `toml:"instance_operation_time_buckets"`
	InstanceCreationTimeBuckets  []float64 `toml:"instance_creation_time_buckets"`
	InstanceIsRunningTimeBuckets []float64 `toml:"instance_is_running_time_buckets"`
	InstanceDeletionTimeBuckets  []float64 `toml:"instance_deletion_time_buckets"`
	InstanceReadinessTimeBuckets []float64 `toml:"instance_readiness_time_buckets"`
	InstanceLifeDurationBuckets  []float64 `toml:"instance_life_duration_buckets"`

	ScaleThrottle   ScaleThrottle   `toml:"scale_throttle"`
	StateStorage    StateStorage    `toml:"state_storage"`
	ConnectorConfig ConnectorConfig `toml:"connector_config"`
	VMIsolation     VMIsolation     `toml:"vm_isolation"`
	Policy          []Policy        `toml:"policy"`
}

// ScaleThrottle is the token bucket on instance creation: Burst is the bucket size,
// Limit the refill per second. Limit 0 = 100/s, -1 = unlimited; Burst 0 = max_instances
// (or Limit when max_instances is 0).
type ScaleThrottle struct {
	Limit int `toml:"limit"`
	Burst int `toml:"burst"`
}

// StateStorage is [runners.autoscaler.state_storage]: persisting instance state so a
// restart adopts instances instead of deleting them.
type StateStorage struct {
	Enabled                      bool   `toml:"enabled"`
	Dir                          string `toml:"dir"`
	KeepInstanceWithAcquisitions bool   `toml:"keep_instance_with_acquisitions"`
}

// ConnectorConfig is [runners.autoscaler.connector_config] (and the vm_isolation one):
// how the host logs in to an instance.
type ConnectorConfig struct {
	OS                   string   `toml:"os"`
	Arch                 string   `toml:"arch"`
	Protocol             string   `toml:"protocol"`
	ProtocolPort         int      `toml:"protocol_port"`
	Username             string   `toml:"username"`
	Password             string   `toml:"password"`
	KeyPath              string   `toml:"key_path"`
	UseStaticCredentials bool     `toml:"use_static_credentials"`
	Keepalive            Duration `toml:"keepalive"`
	Timeout              Duration `toml:"timeout"`
	// UseExternalAddr is a dial option, not a provider.ConnectorConfig field.
	UseExternalAddr bool `toml:"use_external_addr"`
}

// VMIsolation is [runners.autoscaler.vm_isolation]: jobs run in nesting VMs on the instance.
type VMIsolation struct {
	Enabled         bool            `toml:"enabled"`
	NestingHost     string          `toml:"nesting_host"`
	NestingConfig   map[string]any  `toml:"nesting_config"`
	Image           string          `toml:"image"`
	ConnectorConfig ConnectorConfig `toml:"connector_config"`
}

// Policy is one [[runners.autoscaler.policy]]: idle capacity during some periods. Of all
// policies whose periods contain the current minute, the last one wins.
type Policy struct {
	// Periods are 5-field cron expressions; empty means ["* * * * *"].
	Periods []string `toml:"periods"`
	// Timezone is an IANA zone name; empty means the system's local zone.
	Timezone string `toml:"timezone"`
	// IdleCount is the idle capacity to keep, in job slots (not instances).
	IdleCount int `toml:"idle_count"`
	// IdleTime is how long an unneeded idle instance is kept: 0s (not at all) or at
	// least 1s.
	IdleTime         Duration `toml:"idle_time"`
	ScaleFactor      float64  `toml:"scale_factor"`
	ScaleFactorLimit int      `toml:"scale_factor_limit"`
	// PreemptiveMode is nil when unset, which means IdleCount > 0 (off for a forecast
	// policy).
	PreemptiveMode *bool `toml:"preemptive_mode"`
	// Mode is a Flotilla addition: "fixed" (GitLab's idle_count, the default) or
	// "forecast" (idle slots from the demand forecast; idle_count is its floor).
	Mode string `toml:"mode"`
	// TargetWait and TargetPercentile are a forecast policy's goal: that percentile
	// of jobs get a slot within target_wait (default "5s" and 95).
	TargetWait       Duration `toml:"target_wait"`
	TargetPercentile float64  `toml:"target_percentile"`
}

// Docker is [runners.docker]. The keys Flotilla acts on are typed; the rest of GitLab's
// Docker executor keys are accepted so that existing files load.
type Docker struct {
	Host                       string     `toml:"host"`
	Hostname                   string     `toml:"hostname"`
	Image                      string     `toml:"image"`
	Volumes                    []string   `toml:"volumes"`
	PullPolicy                 StringList `toml:"pull_policy"`
	AllowedImages              []string   `toml:"allowed_images"`
	AllowedPullPolicies        []string   `toml:"allowed_pull_policies"`
	AllowedServices            []string   `toml:"allowed_services"`
	AllowedPrivilegedImages    []string   `toml:"allowed_privileged_images"`
	AllowedPrivilegedServices  []string   `toml:"allowed_privileged_services"`
	AllowedUsers               []string   `toml:"allowed_users"`
	Privileged                 bool       `toml:"privileged"`
	ServicesPrivileged         *bool      `toml:"services_privileged"`
	TLSVerify                  bool       `toml:"tls_verify"`
	TLSCertPath                string     `toml:"tls_cert_path"`
	DisableCache               bool       `toml:"disable_cache"`
	DisableEntrypointOverwrite bool       `toml:"disable_entrypoint_overwrite"`
	CacheDir                   string     `toml:"cache_dir"`
	NetworkMode                string     `toml:"network_mode"`
	User                       string     `toml:"user"`
	Memory                     string     `toml:"memory"`
	MemorySwap                 string     `toml:"memory_swap"`
	MemoryReservation          string     `toml:"memory_reservation"`
	CPUs                       string     `toml:"cpus"`
	CPUSetCPUs                 string     `toml:"cpuset_cpus"`
	CPUSetMems                 string     `toml:"cpuset_mems"`
	CPUShares                  int64      `toml:"cpu_shares"`
	ShmSize                    int64      `toml:"shm_size"`
	DNS                        []string   `toml:"dns"`
	DNSSearch                  []string   `toml:"dns_search"`
	ExtraHosts                 []string   `toml:"extra_hosts"`
	CapAdd                     []string   `toml:"cap_add"`
	CapDrop                    []string   `toml:"cap_drop"`
	SecurityOpt                []string   `toml:"security_opt"`
	Devices                    []string   `toml:"devices"`
	GroupAdd                   []string   `toml:"group_add"`
	Links                      []string   `toml:"links"`
	VolumesFrom                []string   `toml:"volumes_from"`
	VolumeDriver               string     `toml:"volume_driver"`
	HelperImage                string     `toml:"helper_image"`
	HelperImageFlavor          string     `toml:"helper_image_flavor"`
	WaitForServicesTimeout     int        `toml:"wait_for_services_timeout"`
	ServicesLimit              *int       `toml:"services_limit"`
	OOMKillDisable             bool       `toml:"oom_kill_disable"`
	Runtime                    string     `toml:"runtime"`
	Isolation                  string     `toml:"isolation"`
	MacAddress                 string     `toml:"mac_address"`
	UsernsMode                 string     `toml:"userns_mode"`
	EnableIPv6                 bool       `toml:"enable_ipv6"`
	NetworkMTU                 int        `toml:"network_mtu"`
	Gpus                       string     `toml:"gpus"`
	// LoadImages are `docker save` archives (paths on the runner host) loaded into
	// each instance's Docker Engine before a job, for instances without registry
	// access; an image they hold is not pulled. A Flotilla addition; `runner exec
	// --load-image` sets it too.
	LoadImages []string `toml:"load_images"`
	// GitLab's service_* limits, oom_score_adjust and helper-image keys: accepted,
	// not acted on.
	ServiceMemory               string `toml:"service_memory"`
	ServiceMemorySwap           string `toml:"service_memory_swap"`
	ServiceMemoryReservation    string `toml:"service_memory_reservation"`
	ServiceCPUSetCPUs           string `toml:"service_cpuset_cpus"`
	ServiceCPUs                 string `toml:"service_cpus"`
	ServiceCPUShares            int64  `toml:"service_cpu_shares"`
	ServiceGpus                 string `toml:"service_gpus"`
	OOMScoreAdjust              int    `toml:"oom_score_adjust"`
	HelperImageAutosetArchAndOS bool   `toml:"helper_image_autoset_arch_and_os"`
	// Sysctls are namespaced kernel parameters of the job's containers; Tmpfs and
	// ServicesTmpfs mount tmpfs file systems (path → mount options) in the job's and
	// the services' containers.
	Sysctls       map[string]string `toml:"sysctls"`
	Tmpfs         map[string]string `toml:"tmpfs"`
	ServicesTmpfs map[string]string `toml:"services_tmpfs"`
	// RegistryMirrors are pull-through mirrors of Docker Hub (a Flotilla addition,
	// named after dockerd's daemon.json key, which docker+machine's
	// engine-registry-mirror set): Docker Hub images are pulled from the first mirror
	// that has them, then from Docker Hub.
	RegistryMirrors []string `toml:"registry_mirrors"`
	// Accepted, not acted on.
	Services          any `toml:"services"`
	Ulimit            any `toml:"ulimit"`
	ContainerLabels   any `toml:"container_labels"`
	LogOptions        any `toml:"log_options"`
	VolumeDriverOps   any `toml:"volume_driver_ops"`
	ServicesDevices   any `toml:"services_devices"`
	DeviceCgroupRules any `toml:"device_cgroup_rules"`
}

// Cache is [runners.cache], with GitLab Runner's keys and meaning: a shared cache in
// object storage that every runner manager and instance of the entry uses.
type Cache struct {
	// Type is s3, gcs or azure; empty keeps caches on the runner host.
	Type string `toml:"Type"`
	// Path prefixes every object name.
	Path string `toml:"Path"`
	// Shared drops the runner/<token> part of object names, so all runners share caches.
	Shared bool `toml:"Shared"`
	// MaxUploadedArchiveSize caps a cache archive in bytes; a larger one is not
	// uploaded (0 = no cap).
	MaxUploadedArchiveSize int64 `toml:"MaxUploadedArchiveSize"`

	S3    *CacheS3    `toml:"s3"`
	GCS   *CacheGCS   `toml:"gcs"`
	Azure *CacheAzure `toml:"azure"`
}

// CacheS3 is [runners.cache.s3]: Amazon S3 or an S3-compatible store (MinIO, …).
type CacheS3 struct {
	// ServerAddress is host[:port] of the store; empty (or "s3.amazonaws.com", as
	// GitLab's docs write it) means Amazon S3's own endpoints for BucketLocation.
	ServerAddress string `toml:"ServerAddress"`
	AccessKey     string `toml:"AccessKey"`
	SecretKey     string `toml:"SecretKey"`
	SessionToken  string `toml:"SessionToken"`
	// AuthenticationType is access-key (the default when AccessKey is set) or iam
	// (the AWS SDK's default credential chain: environment, profile, instance role).
	AuthenticationType string `toml:"AuthenticationType"`
	BucketName         string `toml:"BucketName"`
	BucketLocation     string `toml:"BucketLocation"`
	// Insecure talks plain HTTP to ServerAddress.
	Insecure bool `toml:"Insecure"`
	// PathStyle addresses the bucket in the path rather than the host name; nil means
	// path style for a ServerAddress, virtual-host style for Amazon S3.
	PathStyle *bool `toml:"PathStyle"`
	// ServerSideEncryption is S3 (AES256) or KMS (aws:kms with
	// ServerSideEncryptionKeyID); empty means the bucket's default.
	ServerSideEncryption      string `toml:"ServerSideEncryption"`
	ServerSideEncryptionKeyID string `toml:"ServerSideEncryptionKeyID"`
	// DualStack (default true, as in GitLab Runner) and Accelerate select Amazon's
	// endpoint variants; they do not apply to a ServerAddress.
	DualStack  *bool `toml:"DualStack"`
	Accelerate bool  `toml:"Accelerate"`
	// RoleARN and UploadRoleARN are accepted for compatibility and not used.
	RoleARN       string `toml:"RoleARN"`
	UploadRoleARN string `toml:"UploadRoleARN"`
}

// CacheGCS is [runners.cache.gcs]: Google Cloud Storage, signed with a service
// account's key (CredentialsFile, or AccessID + PrivateKey).
type CacheGCS struct {
	CredentialsFile string `toml:"CredentialsFile"`
	AccessID        string `toml:"AccessID"`
	PrivateKey      string `toml:"PrivateKey"`
	BucketName      string `toml:"BucketName"`
}

// CacheAzure is [runners.cache.azure]: Azure Blob Storage, signed with the account key.
type CacheAzure struct {
	AccountName   string `toml:"AccountName"`
	AccountKey    string `toml:"AccountKey"`
	ContainerName string `toml:"ContainerName"`
	// StorageDomain is the blob service's domain (default blob.core.windows.net); a
	// Flotilla addition, Endpoint, names a whole service URL (an emulator such as
	// Azurite: http://127.0.0.1:10000/devstoreaccount1).
	StorageDomain string `toml:"StorageDomain"`
	Endpoint      string `toml:"Endpoint"`
}

// Instance is [runners.instance].
type Instance struct {
	// AllowedImages are doublestar globs for job images when VM isolation is on; empty
	// allows all.
	AllowedImages []string `toml:"allowed_images"`
	// UseCommonBuildDir only applies with VM isolation or max_use_count = 1.
	UseCommonBuildDir bool `toml:"use_common_build_dir"`
}

// Machine is [runners.machine] of the legacy docker+machine executor. Flotilla does not
// run it; `runner config migrate` converts it.
type Machine struct {
	IdleCount              int                  `toml:"IdleCount"`
	IdleCountMin           int                  `toml:"IdleCountMin"`
	IdleScaleFactor        float64              `toml:"IdleScaleFactor"`
	IdleTime               int                  `toml:"IdleTime"`
	MaxGrowthRate          int                  `toml:"MaxGrowthRate"`
	MaxBuilds              int                  `toml:"MaxBuilds"`
	MachineDriver          string               `toml:"MachineDriver"`
	MachineName            string               `toml:"MachineName"`
	MachineOptions         []string             `toml:"MachineOptions"`
	MachineOptionsWithName []string             `toml:"MachineOptionsWithName"`
	MaxRemovalAttempts     int                  `toml:"MaxRemovalAttempts"`
	Autoscaling            []MachineAutoscaling `toml:"autoscaling"`
	OffPeakPeriods         []string             `toml:"OffPeakPeriods"`
	OffPeakTimezone        string               `toml:"OffPeakTimezone"`
	OffPeakIdleCount       int                  `toml:"OffPeakIdleCount"`
	OffPeakIdleTime        int                  `toml:"OffPeakIdleTime"`
}

// MachineAutoscaling is one [[runners.machine.autoscaling]] period override.
type MachineAutoscaling struct {
	Periods         []string `toml:"Periods"`
	Timezone        string   `toml:"Timezone"`
	IdleCount       int      `toml:"IdleCount"`
	IdleScaleFactor float64  `toml:"IdleScaleFactor"`
	IdleCountMin    int      `toml:"IdleCountMin"`
	IdleTime        int      `toml:"IdleTime"`
}

// Fleeting is the [fleeting] table: the defaults that complete short plugin references
// and the public keys whose signatures `runner fleeting install` accepts.
type Fleeting struct {
	// Registry and Repository complete references such as "aws" or "team/aws"; empty
	// means $FLOTILLA_PLUGIN_REGISTRY / $FLOTILLA_PLUGIN_REPOSITORY, then GitLab's.
	Registry   string `toml:"registry"`
	Repository string `toml:"repository"`
	// PublicKeys are PEM files (or inline PEM) of trusted plugin signers.
	PublicKeys []string `toml:"public_keys"`
}

// Coordination is the [coordination] table: the etcd cluster the runner managers of
// a pool share (docs/ha.md).
type Coordination struct {
	// Endpoints are the etcd client URLs ("https://10.0.0.1:2379").
	Endpoints []string `toml:"endpoints"`
	// Prefix is where Flotilla keeps its keys (default "/flotilla"); managers that
	// share pools use the same prefix.
	Prefix string `toml:"prefix"`
	// LeaseTTL is how long a manager that stops answering keeps its leadership and
	// its slots (default 10s): a dead manager's jobs are written off, and a new leader
	// takes over, within it.
	LeaseTTL Duration `toml:"lease_ttl"`
	// DialTimeout bounds connecting to etcd (default 5s).
	DialTimeout Duration `toml:"dial_timeout"`
	// CAFile, CertFile and KeyFile configure TLS: the CA that signed the members'
	// certificates, and this manager's client certificate and key.
	CAFile   string `toml:"ca_file"`
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
	// Username and Password authenticate with etcd's own users, when enabled.
	Username string `toml:"username"`
	Password string `toml:"password"`
}

// Coordination defaults.
const (
	DefaultCoordinationPrefix = "/flotilla"
	DefaultLeaseTTL           = 10 * time.Second
	DefaultEtcdDialTimeout    = 5 * time.Second
	// MinLeaseTTL is the shortest lease_ttl accepted: etcd's own minimum is a
	// few election timeouts, and a shorter one makes a slow disk look like a death.
	MinLeaseTTL = 2 * time.Second
)

// TTL returns lease_ttl or its default.
func (c *Coordination) TTL() time.Duration {
	if c.LeaseTTL.Duration == 0 {
		return DefaultLeaseTTL
	}
	return c.LeaseTTL.Duration
}

// KeyPrefix returns prefix or its default, without a trailing slash.
func (c *Coordination) KeyPrefix() string {
	p := strings.TrimRight(c.Prefix, "/")
	if p == "" {
		return DefaultCoordinationPrefix
	}
	return p
}

// Duration is a time.Duration written in TOML as a Go duration string ("20m0s", "1h").
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("invalid duration %q: %w", b, err)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration as Go formats it ("20m0s").
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// StringList is a key that GitLab accepts as one string or an array of strings
// (pull_policy).
type StringList []string

// UnmarshalText accepts the single-string form.
func (s *StringList) UnmarshalText(b []byte) error {
	*s = StringList{string(b)}
	return nil
}
