// go-baseline: a faithful re-creation of the design in "Handling 1 Million Requests per Minute
// with Go" (Marcio Castilho, 2015), used as the baseline that corepost is benchmarked against.
//
// The structure, names and control flow follow the article's listings point by point (see
// README.md for the mapping). Its known flaws are kept ON PURPOSE, because they are what the
// comparison is about:
//   - dispatch() starts one goroutine per job, so pending work is unbounded when S3 is slow;
//   - payloadHandler blocks on `JobQueue <- work` once the queue is full;
//   - 200 OK means "the payloads are in this process's memory", not "they are in S3";
//   - upload errors are only logged, the payload is then dropped;
//   - object keys are <folder>/<time.Now().UnixNano()>, which can collide (last writer wins).
//
// The only addition to the article's behaviour is the UPLOAD_NOOP=1 switch (see UploadToS3).
// Everything else that differs is what it took to make the article's fragments compile and run
// against an S3-compatible store; each such place is marked "DEVIATION" below.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"
)

// MaxLength bounds the request body read by the JSON decoder. The article used a constant
// MaxLength without showing its value; 1 MiB matches corepost's default body limit so both
// servers accept the same bodies.
const MaxLength = 1048576

// Article: MaxWorker = os.Getenv("MAX_WORKERS"), MaxQueue = os.Getenv("MAX_QUEUE").
// DEVIATION (to compile and run): the article passed these strings straight to make/NewDispatcher
// and gave no defaults; here they are parsed as integers, with defaults when unset.
var (
	MaxWorker = envInt("MAX_WORKERS", 100)
	MaxQueue  = envInt("MAX_QUEUE", 10000)
)

// S3 configuration (the article used goamz with a package-level bucket; its set-up was not shown).
var (
	S3Endpoint = os.Getenv("S3_ENDPOINT")              // e.g. http://127.0.0.1:3900
	S3Region   = envString("S3_REGION", "garage")      // Garage's default region name
	S3Bucket   = envString("S3_BUCKET", "corepost")    // bucket the objects land in
	S3Prefix   = envString("S3_PREFIX", "go-baseline") // the payloads' storageFolder

	// ADDITION (not in the article): UPLOAD_NOOP=1 skips the PutObject, for the
	// "front end only" benchmark scenario.
	UploadNoop = os.Getenv("UPLOAD_NOOP") == "1"

	// One S3 client for the whole process, created in main(). The article's UploadToS3 used a
	// package-level `bucket` whose construction it did not show. Creating a session/client per
	// upload would re-resolve configuration and credentials on every object and would be
	// unfair to Go, so the client is built once at start-up and shared by all workers
	// (aws-sdk-go clients are safe for concurrent use).
	s3Client *s3.S3
)

// PayloadCollection is the request body: {"version": ..., "token": ..., "data": [...]}.
type PayloadCollection struct {
	WindowsVersion string    `json:"version"`
	Token          string    `json:"token"`
	Payloads       []Payload `json:"data"`
}

// Payload is one element of "data". The article's Payload had (redacted) typed fields; here it
// keeps the element's raw JSON so that any payload round-trips to S3 unchanged.
type Payload struct {
	raw json.RawMessage

	// storageFolder is the key prefix used by UploadToS3 (the article's p.storageFolder).
	storageFolder string
}

// UnmarshalJSON keeps a copy of the element's JSON and sets its storage folder.
// (Needed because Payload holds raw JSON instead of the article's typed fields.)
func (p *Payload) UnmarshalJSON(b []byte) error {
	p.raw = append(p.raw[:0], b...)
	p.storageFolder = S3Prefix
	return nil
}

// MarshalJSON writes the element back as it was received (encoding/json compacts it).
func (p Payload) MarshalJSON() ([]byte, error) {
	return p.raw, nil
}

// UploadToS3 stores one payload as one S3 object, as in the article.
func (p *Payload) UploadToS3() error {
	// the storageFolder method ensures that there are no name collision in
	// case we get same timestamp in the key name
	// (It does not: every payload has the same folder, so two uploads in the same nanosecond
	// overwrite each other. Kept as in the article.)
	storage_path := fmt.Sprintf("%v/%v", p.storageFolder, time.Now().UnixNano())

	bucket := S3Bucket

	b := new(bytes.Buffer)
	encodeErr := json.NewEncoder(b).Encode(p)
	if encodeErr != nil {
		return encodeErr
	}

	// ADDITION: front-end-only mode. The payload has still been encoded, so the CPU spent
	// per payload stays comparable; only the network call is skipped.
	if UploadNoop {
		return nil
	}

	// Everything we post to the S3 bucket should be marked 'private'
	var acl = s3.ObjectCannedACLPrivate
	var contentType = "application/octet-stream"

	// DEVIATION: the article called goamz's bucket.PutReader(storage_path, b, int64(b.Len()),
	// contentType, acl, s3.Options{}); this is the same single PUT with aws-sdk-go v1.
	_, err := s3Client.PutObject(&s3.PutObjectInput{
		Bucket:        aws.String(bucket),
		Key:           aws.String(storage_path),
		Body:          bytes.NewReader(b.Bytes()),
		ContentLength: aws.Int64(int64(b.Len())),
		ContentType:   aws.String(contentType),
		ACL:           aws.String(acl),
	})
	return err
}

// Job represents the job to be run
type Job struct {
	Payload Payload
}

// A buffered channel that we can send work requests on.
var JobQueue chan Job

// Worker represents the worker that executes the job
type Worker struct {
	WorkerPool chan chan Job
	JobChannel chan Job
	quit       chan bool
}

func NewWorker(workerPool chan chan Job) Worker {
	return Worker{
		WorkerPool: workerPool,
		JobChannel: make(chan Job),
		quit:       make(chan bool)}
}

// Start method starts the run loop for the worker, listening for a quit channel in
// case we need to stop it
func (w Worker) Start() {
	go func() {
		for {
			// register the current worker into the worker queue.
			w.WorkerPool <- w.JobChannel

			select {
			case job := <-w.JobChannel:
				// we have received a work request.
				if err := job.Payload.UploadToS3(); err != nil {
					// DEVIATION: the article used log.Errorf (a third-party logger);
					// the standard library's log.Printf is the same thing here.
					log.Printf("Error uploading to S3: %s", err.Error())
				}

			case <-w.quit:
				// we have received a signal to stop
				return
			}
		}
	}()
}

// Stop signals the worker to stop listening for work requests.
func (w Worker) Stop() {
	go func() {
		w.quit <- true
	}()
}

type Dispatcher struct {
	// A pool of workers channels that are registered with the dispatcher
	WorkerPool chan chan Job
	// DEVIATION (to compile): the article's Run() read d.maxWorkers and d.pool, which its
	// Dispatcher struct did not declare; maxWorkers is declared here and d.pool is d.WorkerPool.
	maxWorkers int
}

func NewDispatcher(maxWorkers int) *Dispatcher {
	pool := make(chan chan Job, maxWorkers)
	return &Dispatcher{WorkerPool: pool, maxWorkers: maxWorkers}
}

func (d *Dispatcher) Run() {
	// starting n number of workers
	for i := 0; i < d.maxWorkers; i++ {
		worker := NewWorker(d.WorkerPool)
		worker.Start()
	}

	go d.dispatch()
}

func (d *Dispatcher) dispatch() {
	for {
		select {
		case job := <-JobQueue:
			// a job request has been received
			go func(job Job) {
				// try to obtain a worker job channel that is available.
				// this will block until a worker is idle
				jobChannel := <-d.WorkerPool

				// dispatch the job to the worker job channel
				jobChannel <- job
			}(job)
		}
	}
}

func payloadHandler(w http.ResponseWriter, r *http.Request) {

	if r.Method != "POST" {
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}

	// Read the body into a string for json decoding
	var content = &PayloadCollection{}
	err := json.NewDecoder(io.LimitReader(r.Body, MaxLength)).Decode(&content)
	if err != nil {
		w.Header().Set("Content-Type", "application/json; charset=UTF-8")
		w.WriteHeader(http.StatusBadRequest)
		return
	}

	// Go through each payload and queue items individually to be posted to S3
	for _, payload := range content.Payloads {

		// let's create a job with the payload
		work := Job{Payload: payload}

		// Push the work onto the queue.
		JobQueue <- work
	}

	w.WriteHeader(http.StatusOK)
}

func main() {
	// The S3 client: created once (see the comment on s3Client). Path-style addressing because
	// Garage/MinIO-style endpoints are addressed as http://host:port/bucket/key.
	cfg := aws.NewConfig().
		WithRegion(S3Region).
		WithS3ForcePathStyle(true).
		WithCredentials(credentials.NewEnvCredentials()) // AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
	if S3Endpoint != "" {
		cfg = cfg.WithEndpoint(S3Endpoint).
			WithDisableSSL(strings.HasPrefix(S3Endpoint, "http://"))
	}
	sess, err := session.NewSession(cfg)
	if err != nil {
		log.Fatalf("creating AWS session: %v", err)
	}
	s3Client = s3.New(sess)

	// DEVIATION (to run): the article never showed JobQueue being made; it is buffered with
	// MAX_QUEUE, as its text describes.
	JobQueue = make(chan Job, MaxQueue)

	dispatcher := NewDispatcher(MaxWorker)
	dispatcher.Run()

	addr := envString("ADDR", "127.0.0.1:8080")
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("listen %s: %v", addr, err)
	}
	// Printed once the socket is bound, so that seeing this line means the server is ready.
	fmt.Printf("go-baseline listening on %s\n", ln.Addr())

	// Every path is served by payloadHandler ("/" matches all), so POST / and
	// POST /v1/payloads behave the same.
	http.HandleFunc("/", payloadHandler)
	log.Fatal(http.Serve(ln, nil))
}

func envString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func envInt(name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		log.Fatalf("%s must be a positive integer, got %q", name, v)
	}
	return n
}
