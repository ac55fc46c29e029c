#include "storage/sigv4.h"

#include <stdio.h>
#include <stdlib.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "storage/manifest.h"
#include "storage/test_util.h"

namespace lpd::storage {
namespace {

using testing_util::ReadLocalFile;
using testing_util::TempFolder;
using testing_util::WriteLocalFile;

const char kEmptySha[] =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

absl::Time At(const char* rfc3339) {
  absl::Time t;
  std::string error;
  EXPECT_TRUE(absl::ParseTime(absl::RFC3339_full, rfc3339, &t, &error))
      << error;
  return t;
}

TEST(AwsUriEncodeTest, EncodesAllButUnreserved) {
  EXPECT_EQ(AwsUriEncode("aZ09-_.~", false), "aZ09-_.~");
  EXPECT_EQ(AwsUriEncode("a b/c+d=e&f", false), "a%20b%2Fc%2Bd%3De%26f");
  EXPECT_EQ(AwsUriEncode("a b/c", true), "a%20b/c");
  EXPECT_EQ(AwsUriEncode("\xc3\xbc%", true), "%C3%BC%25");
}

TEST(CanonicalQueryStringTest, SortsEncodesAndKeepsEmptyValues) {
  EXPECT_EQ(CanonicalQueryString({{"uploads", ""}}), "uploads=");
  EXPECT_EQ(CanonicalQueryString(
                {{"prefix", "a/b c"}, {"list-type", "2"}, {"max-keys", "10"}}),
            "list-type=2&max-keys=10&prefix=a%2Fb%20c");
  EXPECT_EQ(CanonicalQueryString({}), "");
}

// AWS's published example: "GET Object" in "Signature Calculations for the
// Authorization Header: Transferring Payload in a Single Chunk" (S3 API
// reference, sig-v4-header-based-auth).
TEST(SignS3RequestTest, MatchesAwsPublishedGetObjectExample) {
  SigV4Request request;
  request.method = "GET";
  request.host = "examplebucket.s3.amazonaws.com";
  request.path = "/test.txt";
  request.headers = {{"Range", "bytes=0-9"}};
  request.payload_sha256 = kEmptySha;
  AwsCredentials credentials{"AKIAIOSFODNN7EXAMPLE",
                             "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};
  SigV4Signed s = SignS3Request(request, credentials, "us-east-1",
                                At("2013-05-24T00:00:00Z"));
  EXPECT_EQ(s.canonical_request,
            absl::StrCat("GET\n/test.txt\n\n"
                         "host:examplebucket.s3.amazonaws.com\n"
                         "range:bytes=0-9\n"
                         "x-amz-content-sha256:",
                         kEmptySha,
                         "\n"
                         "x-amz-date:20130524T000000Z\n\n"
                         "host;range;x-amz-content-sha256;x-amz-date\n",
                         kEmptySha));
  EXPECT_EQ(s.string_to_sign,
            "AWS4-HMAC-SHA256\n20130524T000000Z\n"
            "20130524/us-east-1/s3/aws4_request\n"
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972");
  EXPECT_EQ(s.signature,
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
  EXPECT_EQ(s.authorization,
            "AWS4-HMAC-SHA256 "
            "Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/"
            "aws4_request,SignedHeaders=host;range;x-amz-content-sha256;"
            "x-amz-date,Signature="
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
}

TEST(SignS3RequestTest, AddsSessionTokenHeader) {
  SigV4Request request{"GET", "b.s3.amazonaws.com", "/k", {}, {}, kEmptySha};
  SigV4Signed s = SignS3Request(request, {"AKID", "secret", "TOKEN/+="},
                                "eu-west-1", At("2024-01-02T03:04:05Z"));
  EXPECT_NE(s.canonical_request.find("x-amz-security-token:TOKEN/+=\n"),
            std::string::npos)
      << s.canonical_request;
  EXPECT_NE(s.authorization.find("SignedHeaders=host;x-amz-content-sha256;"
                                 "x-amz-date;x-amz-security-token,"),
            std::string::npos)
      << s.authorization;
}

// Signs requests with botocore (Debian's awscli brings it) and compares.
const char kBotocoreScript[] = R"PY(
import json, sys
from urllib.parse import quote
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

spec = json.load(open(sys.argv[1]))
creds = Credentials(spec['access'], spec['secret'], spec['token'] or None)
auth = S3SigV4Auth(creds, 's3', spec['region'])
# Paths are quoted the way botocore's serializer quotes S3 keys.
url = 'http://' + spec['host'] + quote(spec['path'], safe='/~')
request = AWSRequest(method=spec['method'], url=url,
                     headers=dict(spec['headers']),
                     params=[tuple(p) for p in spec['query']])
request.context['timestamp'] = spec['timestamp']
# What S3SigV4Auth.add_auth sets before signing.
request.headers['X-Amz-Date'] = spec['timestamp']
request.headers['X-Amz-Content-SHA256'] = spec['payload']
if creds.token:
    request.headers['X-Amz-Security-Token'] = creds.token
canonical = auth.canonical_request(request)
to_sign = auth.string_to_sign(request, canonical)
print(json.dumps({'canonical_request': canonical,
                  'string_to_sign': to_sign,
                  'signature': auth.signature(to_sign, request)}))
)PY";

// A python3 that can import botocore, or "".
std::string FindBotocorePython() {
  for (const char* python : {"/usr/bin/python3", "python3"}) {
    std::string command =
        absl::StrCat(python, " -c 'import botocore.auth' >/dev/null 2>&1");
    if (std::system(command.c_str()) == 0) return python;
  }
  return "";
}

class BotocoreTest : public testing::Test {
 protected:
  void SetUp() override {
    python_ = FindBotocorePython();
    ASSERT_FALSE(python_.empty())
        << "no python3 with botocore found (install Debian's awscli: "
           "apt-get install awscli, or run scripts/setup-debian.sh)";
    script_ = temp_.Sub("sign.py");
    WriteLocalFile(script_, kBotocoreScript);
  }

  // Signs with us and with botocore; expects the same strings.
  void ExpectSameAsBotocore(const SigV4Request& request,
                            const AwsCredentials& credentials) {
    const absl::Time time = At("2024-03-05T06:07:08Z");
    SigV4Signed ours =
        SignS3Request(request, credentials, "eu-central-1", time);
    nlohmann::json spec = {
        {"access", credentials.access_key_id},
        {"secret", credentials.secret_access_key},
        {"token", credentials.session_token},
        {"region", "eu-central-1"},
        {"method", request.method},
        {"host", request.host},
        {"path", request.path},
        {"headers", request.headers},
        {"query", request.query},
        {"payload", request.payload_sha256},
        {"timestamp", ours.amz_date},
    };
    const std::string spec_path = temp_.Sub("spec.json");
    const std::string out_path = temp_.Sub("out.json");
    WriteLocalFile(spec_path, spec.dump());
    std::string command = absl::StrCat(python_, " ", script_, " ", spec_path,
                                       " >", out_path, " 2>&1");
    ASSERT_EQ(std::system(command.c_str()), 0) << command << ":\n"
                                               << ReadLocalFile(out_path);
    nlohmann::json theirs =
        nlohmann::json::parse(ReadLocalFile(out_path), nullptr, false);
    ASSERT_TRUE(theirs.is_object()) << ReadLocalFile(out_path);
    EXPECT_EQ(ours.canonical_request,
              theirs["canonical_request"].get<std::string>());
    EXPECT_EQ(ours.string_to_sign, theirs["string_to_sign"].get<std::string>());
    EXPECT_EQ(ours.signature, theirs["signature"].get<std::string>());
  }

  TempFolder temp_;
  std::string python_;
  std::string script_;
  const AwsCredentials credentials_{
      "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""};
  const AwsCredentials with_token_{"ASIAEXAMPLE", "secret/with+chars",
                                   "FwoGZXIvYXdzEJr//////////wEaDH+token="};
};

TEST_F(BotocoreTest, GetObject) {
  SigV4Request r{"GET",
                 "bucket.s3.eu-central-1.amazonaws.com",
                 "/jobs/42/model.bin",
                 {},
                 {},
                 kEmptySha};
  ExpectSameAsBotocore(r, credentials_);
  ExpectSameAsBotocore(r, with_token_);
}

TEST_F(BotocoreTest, GetObjectWithOddKeyAndRange) {
  SigV4Request r{
      "GET", "127.0.0.1:4568",           "/bucket/a b/c+d=e&f(1)~\xc3\xbc.txt",
      {},    {{"Range", "bytes=10-19"}}, kEmptySha};
  ExpectSameAsBotocore(r, credentials_);
}

TEST_F(BotocoreTest, PutObject) {
  SigV4Request r{"PUT",
                 "bucket.s3.eu-central-1.amazonaws.com",
                 "/checkpoints/step-00000500/x.bin",
                 {},
                 {{"Content-Type", "application/octet-stream"}},
                 Sha256Hex("hello")};
  ExpectSameAsBotocore(r, credentials_);
  ExpectSameAsBotocore(r, with_token_);
}

TEST_F(BotocoreTest, ListObjectsV2) {
  SigV4Request r{"GET",
                 "s3.eu-central-1.amazonaws.com",
                 "/bucket",
                 {{"list-type", "2"},
                  {"prefix", "a/b"},
                  {"max-keys", "10"},
                  {"continuation-token",
                   "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/"
                   "wm36Hy4vbOwM=+x"}},
                 {},
                 kEmptySha};
  ExpectSameAsBotocore(r, credentials_);
  ExpectSameAsBotocore(r, with_token_);
}

TEST_F(BotocoreTest, MultipartUpload) {
  const std::string path = "/big/object.bin";
  const std::string host = "bucket.s3.eu-central-1.amazonaws.com";
  const std::string upload_id =
      "VXBsb2FkIElEIGZvciA2aWWpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA--+/=";
  ExpectSameAsBotocore({"POST", host, path, {{"uploads", ""}}, {}, kEmptySha},
                       credentials_);
  ExpectSameAsBotocore({"PUT",
                        host,
                        path,
                        {{"partNumber", "1"}, {"uploadId", upload_id}},
                        {},
                        Sha256Hex("part one")},
                       credentials_);
  const std::string complete =
      "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber>"
      "<ETag>\"abc\"</ETag></Part></CompleteMultipartUpload>";
  ExpectSameAsBotocore({"POST",
                        host,
                        path,
                        {{"uploadId", upload_id}},
                        {{"content-type", "application/xml"}},
                        Sha256Hex(complete)},
                       with_token_);
  ExpectSameAsBotocore(
      {"DELETE", host, path, {{"uploadId", upload_id}}, {}, kEmptySha},
      credentials_);
}

}  // namespace
}  // namespace lpd::storage
