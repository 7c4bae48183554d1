/* JWT verification and key loading. The keys and most signed tokens below
 * were made once with node's crypto (an implementation independent of
 * BearSSL): generateKeyPairSync for RSA-2048 "rsa-a", RSA-3072 "rsa-b",
 * P-256 "ec-256" and P-384 "ec-384", KeyObject.export for the PEM and JWK
 * forms, createHmac / sign (dsaEncoding "ieee-p1363" for ES*) for the
 * tokens; the certificate, PKCS#1, EC PARAMETERS, RSA-1024, P-521 and
 * Ed25519 files with the openssl CLI. No private key is kept. Claims expire
 * in 2100 (exp 4102444800) and every test passes now_s itself, so nothing
 * depends on the clock. Tokens with claims of their own are signed HS256
 * here, with BearSSL's HMAC, to reach the claim checks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wconversion"
#include <bearssl.h>
#pragma GCC diagnostic pop

#include "core/base64.h"
#include "gateway/jwt.h"
#include "unit.h"

static const char RSA_A_PEM[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEArTJNLVRsGwR7IdiVnGjS\n"
    "WE5flco6Umfycd13628nQTr1hDXtsLc5/zuvMfDcQmfeSvgyXZGedgKK5NgBw/n5\n"
    "nrh9ZnTB2oSaRNbyabtEbKKArKbh0u5m/aRRwQbcbcTPmVzFxECyO74TvH/eUebb\n"
    "/KTvVxEqZsh0/fI/yR3FR9D+0goLXI3p64Dd54nx2yyaTX7vJx1MxHRABAuTBTbX\n"
    "ADKz6YXDUZjuwfXxlOSus74HO++fyMYl0gshlOmX/onOFyUoPFOiTZLZKKJUUrkC\n"
    "vAcv4fwDdfOLs6xB9S4TmvX16ZM/cdGyz/p9zAuOQbMUKVJDsA3eR4UfR3kAHBew\n"
    "aQIDAQAB\n"
    "-----END PUBLIC KEY-----\n";

static const char RSA_B_PEM[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MIIBojANBgkqhkiG9w0BAQEFAAOCAY8AMIIBigKCAYEA0mJTQSY2rGtPLBohbcR4\n"
    "wmWgtSFCXedubxtbQ7AHCE/GQtOgvMa7T8Dg6VVVlbgJ5uP6um/Rd5217s5gaE/a\n"
    "1Xc3J40oMKsJA+Sy8b0DASozzs2Gn4rgqG9xI5RPIiMXgIKzp0adZCLBqnCF65i+\n"
    "tOxusrXL23iQ+dm9+dGOlsfpQXZPjFly1VYqRa35rqPBUIbcnm7vv8p8s8wg9MgO\n"
    "o4wCpGp8sDjKYNKXoE9877oewv7Y/Y4c5eaeiJagcRJrAWudnKJ3pgY42aPmJWKU\n"
    "NCLZp8ktHx71Y6wzLUFqYNU7MpwR+kkDWOgSSZZh4l7wzNDs7McUFj/bheMdmvtJ\n"
    "rdsNh6NFjMAHH7NDEbq3/aoxGEz1HhJvtzWspOCDUSqHAUkyrg0xSBqUEw4U08ty\n"
    "S9Wdo+tYVyouoc9AMIAxQA4iIiyQec/MtCYVs6oQkoIlgqwb+DZbZZxpe9E4N0Mh\n"
    "JQsXT6ZzODTezI2r/FSQUWonj1MY9Bcl6UujMOUvD7jfAgMBAAE=\n"
    "-----END PUBLIC KEY-----\n";

static const char EC256_PEM[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEhXgYmHZX+joKU3XQ0sojTH/ss78H\n"
    "wQSi0e9rfcerXmPq1Ze875TqpNeg8GmykGnjX8Ft2H9AvVN76rXoxLDvWA==\n"
    "-----END PUBLIC KEY-----\n";

static const char EC384_PEM[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEGGseMp3s2tcKyp/AWOu5ujrEhrqtXwW+\n"
    "+gzTad4lTzj29MQN5xk416HK2bEG86OCJ04fgPw9MyokLMgQGw/IhijXRqeKvFMj\n"
    "MQX7gvLgmep3IxDvs5fK1fvR8ugLdDTi\n"
    "-----END PUBLIC KEY-----\n";

static const char RSA_A_PKCS1_PEM[] =
    "-----BEGIN RSA PUBLIC KEY-----\n"
    "MIIBCgKCAQEArTJNLVRsGwR7IdiVnGjSWE5flco6Umfycd13628nQTr1hDXtsLc5\n"
    "/zuvMfDcQmfeSvgyXZGedgKK5NgBw/n5nrh9ZnTB2oSaRNbyabtEbKKArKbh0u5m\n"
    "/aRRwQbcbcTPmVzFxECyO74TvH/eUebb/KTvVxEqZsh0/fI/yR3FR9D+0goLXI3p\n"
    "64Dd54nx2yyaTX7vJx1MxHRABAuTBTbXADKz6YXDUZjuwfXxlOSus74HO++fyMYl\n"
    "0gshlOmX/onOFyUoPFOiTZLZKKJUUrkCvAcv4fwDdfOLs6xB9S4TmvX16ZM/cdGy\n"
    "z/p9zAuOQbMUKVJDsA3eR4UfR3kAHBewaQIDAQAB\n"
    "-----END RSA PUBLIC KEY-----\n";

static const char EC256_CERT_PEM[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBfjCCASOgAwIBAgIUISgPSMk9cjFlSnzx80lvBT3mmNYwCgYIKoZIzj0EAwIw\n"
    "EzERMA8GA1UEAwwIand0LXRlc3QwIBcNMjYxMjAxMDczNTEzWhgPMjEyNjExMDcw\n"
    "NzM1MTNaMBMxETAPBgNVBAMMCGp3dC10ZXN0MFkwEwYHKoZIzj0CAQYIKoZIzj0D\n"
    "AQcDQgAEhXgYmHZX+joKU3XQ0sojTH/ss78HwQSi0e9rfcerXmPq1Ze875TqpNeg\n"
    "8GmykGnjX8Ft2H9AvVN76rXoxLDvWKNTMFEwHQYDVR0OBBYEFHa/J5n0UwLibrsJ\n"
    "Pn6S2oP+0vvrMB8GA1UdIwQYMBaAFHa/J5n0UwLibrsJPn6S2oP+0vvrMA8GA1Ud\n"
    "EwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSQAwRgIhAL8UAlNS3G0MmVxQAyBe6cbN\n"
    "ExiVsd9Gk3yxov1fVcdWAiEA0M2jQRKepmb+trDXRFf9+q9FL4EgYLffUydzdfJ+\n"
    "8Nw=\n"
    "-----END CERTIFICATE-----\n";

static const char EC_PARAMS_PEM[] =
    "-----BEGIN EC PARAMETERS-----\n"
    "BggqhkjOPQMBBw==\n"
    "-----END EC PARAMETERS-----\n";

static const char RSA_1024_PEM[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDP6jScnxBv9rGJ3VezuRQt7rZF\n"
    "osw6IsTlqfa8YGqACSGU3yNo6iiWhDBwe2vTKXRr5NJNi7Q+vazOecnSdUJN3JiL\n"
    "MSVLfIAvu2Uxc5E6WJLZ1iak6BKyG0p5bTfpMPeazKoYsI4xrC2CgRsSFoV5tTD3\n"
    "FtTgCaRTAcx7ez2lLQIDAQAB\n"
    "-----END PUBLIC KEY-----\n";

static const char EC521_PEM[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MIGbMBAGByqGSM49AgEGBSuBBAAjA4GGAAQBAzidOLrIy1sQWHOGUCH9EPDtOxl0\n"
    "r/RYrJ1sk8PLByp089YFm0fO+INDB5kfIjhgvcw4Pe1bsCAO1cPPAYdICCMBwVre\n"
    "Pw80Fyif3ALnLExXRsSnf1VFCmzhgYgVOOIhW/NIN/MPVYoC9Plhguswa4/5hBDC\n"
    "OaDSfTk8DLk9DSIP0bQ=\n"
    "-----END PUBLIC KEY-----\n";

static const char ED25519_PEM[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEAYmGNYwS5zxjoIOEJtL8EGK6WMbU+ejgK2NkXlw+stww=\n"
    "-----END PUBLIC KEY-----\n";

static const char JWKS[] =
    "{\n"
    " \"keys\": [\n"
    "  {\n"
    "   \"kid\": \"rsa-a\",\n"
    "   \"alg\": \"RS256\",\n"
    "   \"kty\": \"RSA\",\n"
    "   \"n\": \"rTJNLVRsGwR7IdiVnGjSWE5flco6Umfycd13628nQTr1hDXtsLc5_zuvMfDcQmfeSvgyXZGedgKK5NgBw_n5nrh9ZnTB2oSaRNbyabtEbKKArKbh0u5m_aRRwQbcbcTPmVzFxECyO74TvH_eUebb_KTvVxEqZsh0_fI_yR3FR9D-0goLXI3p64Dd54nx2yyaTX7vJx1MxHRABAuTBTbXADKz6YXDUZjuwfXxlOSus74HO--fyMYl0gshlOmX_onOFyUoPFOiTZLZKKJUUrkCvAcv4fwDdfOLs6xB9S4TmvX16ZM_cdGyz_p9zAuOQbMUKVJDsA3eR4UfR3kAHBewaQ\",\n"
    "   \"e\": \"AQAB\"\n"
    "  },\n"
    "  {\n"
    "   \"kid\": \"rsa-b\",\n"
    "   \"kty\": \"RSA\",\n"
    "   \"n\": \"0mJTQSY2rGtPLBohbcR4wmWgtSFCXedubxtbQ7AHCE_GQtOgvMa7T8Dg6VVVlbgJ5uP6um_Rd5217s5gaE_a1Xc3J40oMKsJA-Sy8b0DASozzs2Gn4rgqG9xI5RPIiMXgIKzp0adZCLBqnCF65i-tOxusrXL23iQ-dm9-dGOlsfpQXZPjFly1VYqRa35rqPBUIbcnm7vv8p8s8wg9MgOo4wCpGp8sDjKYNKXoE9877oewv7Y_Y4c5eaeiJagcRJrAWudnKJ3pgY42aPmJWKUNCLZp8ktHx71Y6wzLUFqYNU7MpwR-kkDWOgSSZZh4l7wzNDs7McUFj_bheMdmvtJrdsNh6NFjMAHH7NDEbq3_aoxGEz1HhJvtzWspOCDUSqHAUkyrg0xSBqUEw4U08tyS9Wdo-tYVyouoc9AMIAxQA4iIiyQec_MtCYVs6oQkoIlgqwb-DZbZZxpe9E4N0MhJQsXT6ZzODTezI2r_FSQUWonj1MY9Bcl6UujMOUvD7jf\",\n"
    "   \"e\": \"AQAB\",\n"
    "   \"use\": \"sig\"\n"
    "  },\n"
    "  {\n"
    "   \"kid\": \"ec-256\",\n"
    "   \"kty\": \"EC\",\n"
    "   \"x\": \"hXgYmHZX-joKU3XQ0sojTH_ss78HwQSi0e9rfcerXmM\",\n"
    "   \"y\": \"6tWXvO-U6qTXoPBpspBp41_Bbdh_QL1Te-q16MSw71g\",\n"
    "   \"crv\": \"P-256\"\n"
    "  },\n"
    "  {\n"
    "   \"kid\": \"ec-384\",\n"
    "   \"alg\": \"ES384\",\n"
    "   \"kty\": \"EC\",\n"
    "   \"x\": \"GGseMp3s2tcKyp_AWOu5ujrEhrqtXwW--gzTad4lTzj29MQN5xk416HK2bEG86OC\",\n"
    "   \"y\": \"J04fgPw9MyokLMgQGw_IhijXRqeKvFMjMQX7gvLgmep3IxDvs5fK1fvR8ugLdDTi\",\n"
    "   \"crv\": \"P-384\"\n"
    "  }\n"
    " ]\n"
    "}\n";

static const char SECRET[] = "correct horse battery staple, 32+ bytes of secret";

static const char TOK_HS256[] =
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTEiLCJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiw"
    "iYXVkIjoic3NlZ2F0ZSIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjoxNzAwMDAwMDAwLCJpYXQiOjE3MDAwMDAwMDAsInJwbSI6NjA"
    "sInRwbSI6MTAwMDAwLCJzdHJlYW1zIjo0fQ.GPGT8ezmp6wkPElxexAm-eM2EYbAbJFwUru1mJcX8cE";
static const char TOK_HS384[] =
    "eyJhbGciOiJIUzM4NCIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTEiLCJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiw"
    "iYXVkIjoic3NlZ2F0ZSIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjoxNzAwMDAwMDAwLCJpYXQiOjE3MDAwMDAwMDAsInJwbSI6NjA"
    "sInRwbSI6MTAwMDAwLCJzdHJlYW1zIjo0fQ.t_dxPFjL4TKiLjoYfaQV8LnR4cA2e-57eqSdIKrm_J125iLCq_s1Fix32OJmxyEG";
static const char TOK_HS512[] =
    "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTEiLCJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiw"
    "iYXVkIjoic3NlZ2F0ZSIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjoxNzAwMDAwMDAwLCJpYXQiOjE3MDAwMDAwMDAsInJwbSI6NjA"
    "sInRwbSI6MTAwMDAwLCJzdHJlYW1zIjo0fQ.-1wKidp-1gN8k6PhQ5vWVoq5CIyrd6aRJHC9yh5Kh7NXYeqUBwIhZ-a9Vjo76x90"
    "T1abYiViqVQGV9avvcZF_g";
static const char TOK_RS256[] =
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS1hIn0.eyJzdWIiOiJ1c2VyLTEiLCJpc3MiOiJodHRwczovL2lz"
    "c3Vlci5leGFtcGxlIiwiYXVkIjoic3NlZ2F0ZSIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjoxNzAwMDAwMDAwLCJpYXQiOjE3MDAw"
    "MDAwMDAsInJwbSI6NjAsInRwbSI6MTAwMDAwLCJzdHJlYW1zIjo0fQ.lcYdKaxIzIiXQJgg38EgjVqvp5X5H51pus0HjG29rN_Z3"
    "MImSR1275rsJ5ZQuHF-1fbDrmo1OqhUwiZwFRuViZI3QCOmPdiYHw7YDfgrjwpwGadyDhb_Ws5XACTmDKclM5uj90YjpqzRGySuP"
    "KZI1JBfuO7WMnJc4YFVbTTNoQ95jdiv9KGem_mAmN6ULME8AUh1X7LkPHxJkUxfdFXeYu70caU5NKtUmsTlV5kfj2v75K7Y_hRn5"
    "tMMi52tA58HTfs1CD3fehfTQEM1ZyyXvZzZ1SDVU8nQiyfiJNqtLgRFKArZq7LXuOdki8QzztE21HCJhp21SLtwEdMxOqN9zA";
static const char TOK_RS384[] =
    "eyJhbGciOiJSUzM4NCIsInR5cCI6IkpXVCIsImtpZCI6InJzYS1iIn0.eyJzdWIiOiJ1c2VyLTEiLCJpc3MiOiJodHRwczovL2lz"
    "c3Vlci5leGFtcGxlIiwiYXVkIjoic3NlZ2F0ZSIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjoxNzAwMDAwMDAwLCJpYXQiOjE3MDAw"
    "MDAwMDAsInJwbSI6NjAsInRwbSI6MTAwMDAwLCJzdHJlYW1zIjo0fQ.fon10Fk3tZ_ZooZ2G__JoSedy6l9dS47NpJGeiHf7vxsT"
    "gojBStSV3qVJKSEyA7deq701PelJQGRpy5zZe8m6Mv7ozAIJQ2v2LtWGfIDuWL1AcSXcFFRZwPQXsyMch9buSO9-1uaGrQJdPJs1"
    "kCLcu6GCiZSd7FoBbUqEkW6c9YiRFoomCnlPZQl2Q36NYvevpv_NRkziDaC46-xUmVtOciBFFR60gQzAkRPhlG2k4nMNbIOWRQkL"
    "XbMRYD42QuXa4zGMijoDs3wfIfM7BJ2KGlGnODHnrMOPWN7LXpGjkOJUDRWG-JW2Y59_iEe8joFapMGVDydgIuptIUfeE4l_otVi"
    "XCvNYf-wBY5WOfZ53-tLkRv1kwz0VHAf7rfprD_9eDAZkj-RDN8KTFBdy9uz4MpVQRMQFg26qPNaHj3ljMKsona_SKFZgPsRHXHd"
    "SW86b4m2Z4kPz0GQ4824RPGM9qWMh-sYuG51HugkJy6em3W9MAM5WLF--3gVb82h9-w";
static const char TOK_RS512[] =
    "eyJhbGciOiJSUzUxMiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS1iIn0.eyJzdWIiOiJ1c2VyLTEiLCJpc3MiOiJodHRwczovL2lz"
    "c3Vlci5leGFtcGxlIiwiYXVkIjoic3NlZ2F0ZSIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjoxNzAwMDAwMDAwLCJpYXQiOjE3MDAw"
    "MDAwMDAsInJwbSI6NjAsInRwbSI6MTAwMDAwLCJzdHJlYW1zIjo0fQ.xvKHwlh7uP8B5y3RHsbvIz9NHSYDEOOvTqImmsOjLDVks"
    "s1Ifdss3T0oMIHIt8WLTGEfZgoGYoHPkj8XZhZpDp5EE_Gj5YObRebLu_PdJZTXLXwfiGpO5DB0102g90jkHMkrymsSvwurbw-wr"
    "NNDWx3XmoBBShPeEFkLA-gJSoMU41AZU4Z0y6TfN5LVPYFJpkP1tbxKdlpsiGxEQvkNrTcPENmQg6k7TdI-4P6UY_TeaIVLhzyYs"
    "33bpK3TlgVFly-Hz4UgHjfSBzsc3nRaLxVUCLiKbFMeRtmnU2h66tq4fFJ-r46vsIpUBz85gMYUz_qTsNPM15qd06HBjSR_E7qIb"
    "TRyYgN8h5jTY6RjEnQmchtVFB1lsIkS2cMgtQhv_AYYkj4kays08nL_C-M1_k7pEkAV3aTnU-qoWF3sN8TyhqU9yblx_AHC4Xnxx"
    "_YZFNVsZ0beULplgZb9jayE_K76Apa9_-7tiz_l8wyMno5z_bM82j2k9f9zgoDEcmXX";
static const char TOK_RS256_B[] =
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS1iIn0.eyJzdWIiOiJ1c2VyLTEiLCJpc3MiOiJodHRwczovL2lz"
    "c3Vlci5leGFtcGxlIiwiYXVkIjoic3NlZ2F0ZSIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjoxNzAwMDAwMDAwLCJpYXQiOjE3MDAw"
    "MDAwMDAsInJwbSI6NjAsInRwbSI6MTAwMDAwLCJzdHJlYW1zIjo0fQ.hu_6wQy0MfxKDFK8HG9avoJO-FpXLkuM-pFDEMBAJRiN0"
    "pWgGRYgMubk6rPOEJ6xBlbex-_wUCxHWtT3sZNeXo_NK8xZCNHNyFgC5FHr3hqc1BqDMHEbAmcIX7yWB1z-JvKjvroHQNQswhX85"
    "aOyaVbxV1q9tM9yp7s42-7ydqweQ_o8ZLvVhqfvkJJyBKesLWnz3I_PYCLNs3VaHy8bunqu-heoy9nMY9fxUfb30UXjtR5IoHIhY"
    "yqUcDP6YB_q6UUcYUSa-J6rBiHci3ovJcHWqaR3jmhtMPdmy8R16g3FE-w_YqJk6Is7X1-yFaFL5wnjWkHWqf8wYGcu9Lqr3_woM"
    "zXd9zLsH6PvIq2qkRejOOXVI5bkwOh3lwUFMAQw2FbOCfmi1xzc8kA3D3KrqswXC7A-H1Vz8nVC0k3Z9VrJ5oJ0hwpLrnr5AnZ52"
    "ZCBqih9DkzzE4x_M6aJOCtsoXDI6qapI-3o3GEdbucL7ymxUgCI7MOmPzXcYN3BDiSP";
static const char TOK_RS256_B_NOKID[] =
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTEiLCJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiw"
    "iYXVkIjoic3NlZ2F0ZSIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjoxNzAwMDAwMDAwLCJpYXQiOjE3MDAwMDAwMDAsInJwbSI6NjA"
    "sInRwbSI6MTAwMDAwLCJzdHJlYW1zIjo0fQ.Wxjl5V_-6oe5mZVDGyQ0qrc9EZDMSoJJdPXog0gg9hYvwnpgI--3lrEWzA91LHmH"
    "jM_fLRxzInlyE2u4D6S9MQyaDKpuXsaAA-4Galt7SAmuURlisMaWV8B-5U-z0LQPXVBeF1TOKlXy7DzVmSWnku2O8ceia_Xx3mZF"
    "dl8gJlPMKAQc9WNhTOZ1oQjzpGmshh1pKMEKBF6HsmGeNNVXxqU3XhG5RpLlepc0Thz3aDa0FhxMcTIiUha5UZOqBd7BMGVwWNAV"
    "wpn3Au9KQhGdnwWQutZ8Z2gebJKaeHHd8aXCUzHmf885nOhJEHyLpioKSlr337RwNUqBJVpOGdCyGlVCuLwLQrmZWgCjq9ROz-Lv"
    "ODqrNYGV8x69Stzc7acozkJU_51f9rgW54Xm6di6d8bZJSeaSBK6UgeXHJ-xoSzFXJEbmkQ-taLWD2E14_NAVnICFt9KD5NFuGP4"
    "2d_-eWSfoWad2BwQyU8R_6wT9mI-Wnxg9DJc1oeX-n3wWDRc";
static const char TOK_RS256_UNKNOWN_KID[] =
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6Im5vcGUifQ.eyJzdWIiOiJ1c2VyLTEiLCJpc3MiOiJodHRwczovL2lzc"
    "3Vlci5leGFtcGxlIiwiYXVkIjoic3NlZ2F0ZSIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjoxNzAwMDAwMDAwLCJpYXQiOjE3MDAwM"
    "DAwMDAsInJwbSI6NjAsInRwbSI6MTAwMDAwLCJzdHJlYW1zIjo0fQ.a6xwbtqsnpFFiCxRLTG_HEMOEqzuGYEcXylnNJLSz9BLbs"
    "06OX0vyceyAxoC_5NbHtYVWLTDj-Es0DSlI_Njq1eS9DXaotkHD2PPddI0c_Tf53oKfQm8JGskMf6pABniJ2c0VexQjt7Em03bfG"
    "9G4dTh4IGPEPQB6A4CDKdxObfguGz5ge1Nf8vxFu3xYi57Bw6R9N1xu8yxIt0wYvn5MZ_tkD9A1WaKk_KWCUtdCe6ukdLzFeCuLh"
    "qSq_UA-sL9rU822KwhurvjqokMgMi0ojgaLOEVGmj7L9bmANY9lt0yWasN6H4zOcPSfbXXzUfnxxuyW3z5eFMNK6Ti0TSEKQ";
static const char TOK_RS256_KID_A_SIGNED_B[] =
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS1hIn0.eyJzdWIiOiJ1c2VyLTEiLCJpc3MiOiJodHRwczovL2lz"
    "c3Vlci5leGFtcGxlIiwiYXVkIjoic3NlZ2F0ZSIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjoxNzAwMDAwMDAwLCJpYXQiOjE3MDAw"
    "MDAwMDAsInJwbSI6NjAsInRwbSI6MTAwMDAwLCJzdHJlYW1zIjo0fQ.rEFrDsfSfdeuSKiNbR6AcjPZ4EEY9mw4OcQ_LLCcWb7i_"
    "P9jB1-4Ec06RvsxB3OSRf0rVAn_QU1A0_CNckW-YY2sBwdexNqii5aS5Rqj403dRHOdE_UA3coAxE7-H4iGA8lHpvZC4sNltK_uV"
    "2U9uSogURl6kK2sVfo6M-tAiVWt5QT3xbiiZDGnhsDIV84X4UqFAOUfvcuvTtU_s5JYQeyJU7SRX_XM5vk9NBDDbQgQA2WSduNcy"
    "cHVggGQKYDz2sx-WSF0baocWPhWw1ga-1KLAU3Q53svVWm9GF85HhU9ac9tWP2zzsMuBEz4AOMrppQVSbKjQ_H0b3j8LxTPXYcWk"
    "4hzyRglNq0jYHxhc7AKj_wKybcxAyRl2F6ibm9M_Qoj9KdpuMBcs24F3kCvKRUfZII7FT8sgr8SkA1ydkkAn5CTI1PUW-_Fue-kP"
    "p22NE7fxbQRUIQDTSmrJTNzl0cBIfdFzcmJqJD1aAr0x8zmCGazr0pJzhjQCwTptBIx";
static const char TOK_ES256[] =
    "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImVjLTI1NiJ9.eyJzdWIiOiJ1c2VyLTEiLCJpc3MiOiJodHRwczovL2l"
    "zc3Vlci5leGFtcGxlIiwiYXVkIjoic3NlZ2F0ZSIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjoxNzAwMDAwMDAwLCJpYXQiOjE3MDA"
    "wMDAwMDAsInJwbSI6NjAsInRwbSI6MTAwMDAwLCJzdHJlYW1zIjo0fQ.cmTbPGISp2zAewIHbg_w5f8btU61NYtTCUbYihoWwYUI"
    "yaKsSwAukokqEvF7m-BjA2845SNwRyClKZQmarnHeg";
static const char TOK_ES384[] =
    "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCIsImtpZCI6ImVjLTM4NCJ9.eyJzdWIiOiJ1c2VyLTEiLCJpc3MiOiJodHRwczovL2l"
    "zc3Vlci5leGFtcGxlIiwiYXVkIjoic3NlZ2F0ZSIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjoxNzAwMDAwMDAwLCJpYXQiOjE3MDA"
    "wMDAwMDAsInJwbSI6NjAsInRwbSI6MTAwMDAwLCJzdHJlYW1zIjo0fQ.WnObqiQwF6Ap9b8IWPlWrDKhXVv9wz6i9qeTu0Z3u74H"
    "zJpOVgyP8L2LDjJpjiW-6oWhicA5hCf2N7RZ149qF2y_j36beaiZ9v_G2g2i1QIBHgO0-w4WkSeGrRth51n3";
static const char TOK_ES256_NOKID[] =
    "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTEiLCJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiw"
    "iYXVkIjoic3NlZ2F0ZSIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjoxNzAwMDAwMDAwLCJpYXQiOjE3MDAwMDAwMDAsInJwbSI6NjA"
    "sInRwbSI6MTAwMDAwLCJzdHJlYW1zIjo0fQ.FLwz31Igl7-LVQ9TQI4i_qwAT-VWkaFonN953Dnjotwgs-MfFwHdxmXwN3t_aT_s"
    "-OOTec9YAnM4FXpPzmbC-w";
static const char TOK_RS384_KID_A[] =
    "eyJhbGciOiJSUzM4NCIsInR5cCI6IkpXVCIsImtpZCI6InJzYS1hIn0.eyJzdWIiOiJ1c2VyLTEiLCJpc3MiOiJodHRwczovL2lz"
    "c3Vlci5leGFtcGxlIiwiYXVkIjoic3NlZ2F0ZSIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjoxNzAwMDAwMDAwLCJpYXQiOjE3MDAw"
    "MDAwMDAsInJwbSI6NjAsInRwbSI6MTAwMDAwLCJzdHJlYW1zIjo0fQ.TKulCAZnYck3GS8kDY1wZtsMbtetdko_oVEuQrq78bsBE"
    "X5Dufva9PpPzy41jt0SHWvglLn12dqcvsW-8lVBeJXCSiTtPcPTsr-fEcjyuIqYThJLjKMESzmPTFwEsUf_harmNWTxuuIrGSFLI"
    "JM6eQfuWGxXX3xGr4yNvAgUW3t7yEq8xDz7QUCb_-zjCYpv4SAK4ZuQU6IWLuqBAASvflSzmU3w78DJ8fTNlquiJt27g-Pr9RL8W"
    "s6hAtzHF4XlGVf_muq7O8SXGKv_fsOvEvru2vbI6shMqCTFF-xPA06ZLrzJj2FENifl1ITM1dUvgAcX0_eWsLFcXN1VBu8HTg";
static const char TOK_ES256_KID_RSA[] =
    "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS1hIn0.eyJzdWIiOiJ1c2VyLTEiLCJpc3MiOiJodHRwczovL2lz"
    "c3Vlci5leGFtcGxlIiwiYXVkIjoic3NlZ2F0ZSIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjoxNzAwMDAwMDAwLCJpYXQiOjE3MDAw"
    "MDAwMDAsInJwbSI6NjAsInRwbSI6MTAwMDAwLCJzdHJlYW1zIjo0fQ.haoEtxZZKLysYy14ZfiEEouxbQjL7OCXq0acZ7iVi72ke"
    "z9Qhx0_WT5Em-2CrueCbgD5F2YuY0OVhvLnHnMTBQ";
static const char TOK_ES384_NOKID[] =
    "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTEiLCJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiw"
    "iYXVkIjoic3NlZ2F0ZSIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjoxNzAwMDAwMDAwLCJpYXQiOjE3MDAwMDAwMDAsInJwbSI6NjA"
    "sInRwbSI6MTAwMDAwLCJzdHJlYW1zIjo0fQ.iXs7s-uC_xYkcgFD3ICjEmOCZB7HQkc-wGZ0lYyeDlEvB1-89evmb5f946QLRZeg"
    "0DmS9-8OsgTuJ3D7xeHBGScpqYY78f8jv-qyoYJd7jlHIcZS2Qt84dEF3CbwlMLp";
static const char TOK_CONFUSION[] =
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTEiLCJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiw"
    "iYXVkIjoic3NlZ2F0ZSIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjoxNzAwMDAwMDAwLCJpYXQiOjE3MDAwMDAwMDAsInJwbSI6NjA"
    "sInRwbSI6MTAwMDAwLCJzdHJlYW1zIjo0fQ.iWcgaFFXCDD9lz3ecAyBDJda4GzisGe7cIkyHbfuJZE";
static const char TOK_RS256_SUB_ESCAPED[] =
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS1hIn0.eyJzdWIiOiJjYWbDqSDwn5iAIiwiaXNzIjoiaHR0cHM6"
    "Ly9pc3N1ZXIuZXhhbXBsZSIsImF1ZCI6InNzZWdhdGUiLCJleHAiOjQxMDI0NDQ4MDAsIm5iZiI6MTcwMDAwMDAwMCwiaWF0Ijox"
    "NzAwMDAwMDAwLCJycG0iOjYwLCJ0cG0iOjEwMDAwMCwic3RyZWFtcyI6NH0.K7TPhmn82jtKSdlAEcV0k7-hwgnAUXEgBBCid8c9"
    "3yZzojUeFbbe0Kb3CWkVq5-mJvCbIS36AeuH7FWpR6P5HJfbHUd6Yft_qFokjEbHDSwF-5DsCQTzCe6v4Ha3BoBP5ic5_A59s3vO"
    "D4UQHlqn2Eb5B6mZJsT5HUfYdaAU5BjnOuNKyGxL2VlGRfpc0PPu0__KwWC2bLvqmmUkI1FYlI_FSEF-0nPKC-tAdGjwPTcb0JPm"
    "yazvf_6TupPbRMVaHH3-HwmBlf4IvCWBKCne3tDOSL4i5DGp-MzDJOt7A62kWYPC5D4VtSz9Qev55JYjzaCeuuNepDmMQHhkb63P"
    "ZQ";
/* The DER of EC256_PEM. */
static const unsigned char EC256_SPKI_DER[] = {
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04, 0x85, 0x78, 0x18, 0x98, 0x76,
    0x57, 0xfa, 0x3a, 0x0a, 0x53, 0x75, 0xd0, 0xd2, 0xca, 0x23, 0x4c, 0x7f, 0xec, 0xb3, 0xbf, 0x07,
    0xc1, 0x04, 0xa2, 0xd1, 0xef, 0x6b, 0x7d, 0xc7, 0xab, 0x5e, 0x63, 0xea, 0xd5, 0x97, 0xbc, 0xef,
    0x94, 0xea, 0xa4, 0xd7, 0xa0, 0xf0, 0x69, 0xb2, 0x90, 0x69, 0xe3, 0x5f, 0xc1, 0x6d, 0xd8, 0x7f,
    0x40, 0xbd, 0x53, 0x7b, 0xea, 0xb5, 0xe8, 0xc4, 0xb0, 0xef, 0x58,
};

enum { NOW = 1800000000 };

static const jwt_policy POLICY = {"https://issuer.example", "ssegate", 0};

static jwt_keys *secret_keys(const char *secret)
{
    jwt_keys *k = jwt_keys_new();
    const char *why = NULL;
    if (jwt_keys_set_secret(k, secret, strlen(secret), &why) != 0)
        unit_fail(__FILE__, __LINE__, "set_secret: %s", why);
    return k;
}

static jwt_keys *pem_keys(const char *pem)
{
    jwt_keys *k = jwt_keys_new();
    const char *why = NULL;
    if (jwt_keys_parse_pem(k, pem, strlen(pem), "test.pem", &why) != 0)
        unit_fail(__FILE__, __LINE__, "parse_pem: %s", why);
    return k;
}

static jwt_keys *jwks_keys(const char *jwks)
{
    jwt_keys *k = jwt_keys_new();
    const char *why = NULL;
    if (jwt_keys_parse_jwks(k, jwks, strlen(jwks), "test.jwks", &why) != 0)
        unit_fail(__FILE__, __LINE__, "parse_jwks: %s", why);
    return k;
}

/* NULL when the token is valid, else why it is not. */
static const char *check_at(const jwt_keys *k, const jwt_policy *p, const char *token, uint64_t now, jwt_claims *c)
{
    jwt_claims scratch;
    const char *why = NULL;
    int rc = jwt_verify(k, p, slice_of(token), now, c ? c : &scratch, &why);
    if (rc == 0)
        return NULL;
    return why ? why : "(no reason given)";
}

static const char *check(const jwt_keys *k, const char *token) { return check_at(k, &POLICY, token, NOW, NULL); }

#define CHECK_VALID(expr)                                                                  \
    do {                                                                                   \
        const char *why_ = (expr);                                                         \
        if (why_ != NULL)                                                                  \
            unit_fail(__FILE__, __LINE__, "%s refused: %s", #expr, why_);                  \
    } while (0)

#define CHECK_REFUSED(expr, want)                                                          \
    do {                                                                                   \
        const char *why_ = (expr);                                                         \
        if (why_ == NULL || strstr(why_, (want)) == NULL)                                  \
            unit_fail(__FILE__, __LINE__, "%s: wanted \"%s\", got \"%s\"", #expr, (want),  \
                      why_ ? why_ : "(accepted)");                                         \
    } while (0)

/* header.payload.signature, HS256-signed with `secret`, from JSON texts. */
static const char *hs256(const char *header, const char *payload, const char *secret)
{
    static char token[JWT_MAX_TOKEN + 64];
    size_t n = base64url_encode(header, strlen(header), token, sizeof token);
    token[n++] = '.';
    n += base64url_encode(payload, strlen(payload), token + n, sizeof token - n);
    br_hmac_key_context kc;
    br_hmac_context hc;
    unsigned char mac[32];
    br_hmac_key_init(&kc, &br_sha256_vtable, secret, strlen(secret));
    br_hmac_init(&hc, &kc, 0);
    br_hmac_update(&hc, token, n);
    br_hmac_out(&hc, mac);
    token[n++] = '.';
    n += base64url_encode(mac, sizeof mac, token + n, sizeof token - n);
    token[n] = '\0';
    return token;
}

static const char HS_HEADER[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

/* A valid payload with `extra` members spliced in front (they come first,
 * so a test can add a member without repeating one). */
static const char *claims_with(const char *extra)
{
    static char buf[JWT_MAX_TOKEN];
    int n = snprintf(buf, sizeof buf, "{%s%s\"sub\":\"user-1\",\"iss\":\"https://issuer.example\",\"aud\":\"ssegate\"}",
                     extra, *extra ? "," : "");
    if (n < 0 || (size_t)n >= sizeof buf)
        unit_fail(__FILE__, __LINE__, "claims do not fit");
    return buf;
}

/* An HS256 token over claims_with(extra) plus an exp unless extra has one. */
static const char *hs_token(const char *extra)
{
    static char with_exp[JWT_MAX_TOKEN];
    int n = strstr(extra, "\"exp\"") == NULL
                ? snprintf(with_exp, sizeof with_exp, "\"exp\":4102444800%s%s", *extra ? "," : "", extra)
                : snprintf(with_exp, sizeof with_exp, "%s", extra);
    if (n < 0 || (size_t)n >= sizeof with_exp)
        unit_fail(__FILE__, __LINE__, "claims do not fit");
    return hs256(HS_HEADER, claims_with(with_exp), SECRET);
}

/* The token with one character of its signature changed, keeping the
 * base64url canonical (a middle character carries no unused bits). */
static const char *corrupt_signature(const char *token)
{
    static char buf[JWT_MAX_TOKEN + 1];
    snprintf(buf, sizeof buf, "%s", token);
    char *sig = strrchr(buf, '.') + 1;
    size_t mid = strlen(sig) / 2;
    sig[mid] = sig[mid] == 'A' ? 'B' : 'A';
    return buf;
}

/* ---- every algorithm ---- */

TEST(jwt_hmac_algorithms)
{
    jwt_keys *k = secret_keys(SECRET);
    CHECK_EQ_SIZE(jwt_keys_count(k), 1);
    const char *tokens[] = {TOK_HS256, TOK_HS384, TOK_HS512};
    for (size_t i = 0; i < 3; i++) {
        jwt_claims c;
        CHECK_VALID(check_at(k, &POLICY, tokens[i], NOW, &c));
        CHECK_STR(c.sub, "user-1");
        CHECK(c.has_rpm && c.rpm == 60);
        CHECK(c.has_tpm && c.tpm == 100000);
        CHECK(c.has_streams && c.streams == 4);
        CHECK(c.exp == 4102444800u);
        CHECK_REFUSED(check(k, corrupt_signature(tokens[i])), "bad signature");
    }
    jwt_keys_free(k);
    jwt_keys *other = secret_keys("another secret of a good length, not this");
    CHECK_REFUSED(check(other, TOK_HS256), "bad signature");
    jwt_keys_free(other);
}

TEST(jwt_rsa_algorithms)
{
    jwt_keys *jwks = jwks_keys(JWKS);
    jwt_keys *pem = pem_keys(RSA_B_PEM);
    CHECK_EQ_SIZE(jwt_keys_count(jwks), 4);
    CHECK_VALID(check(jwks, TOK_RS256));
    CHECK_VALID(check(jwks, TOK_RS384));
    CHECK_VALID(check(jwks, TOK_RS512));
    CHECK_VALID(check(pem, TOK_RS384));
    CHECK_VALID(check(pem, TOK_RS512));
    CHECK_REFUSED(check(pem, TOK_RS256), "bad signature"); /* signed by rsa-a */
    CHECK_REFUSED(check(jwks, corrupt_signature(TOK_RS256)), "bad signature");
    CHECK_REFUSED(check(jwks, corrupt_signature(TOK_RS512)), "bad signature");
    CHECK_REFUSED(check(pem, corrupt_signature(TOK_RS384)), "bad signature");
    /* a signature one byte short of the modulus */
    char cut[JWT_MAX_TOKEN];
    snprintf(cut, sizeof cut, "%s", TOK_RS384);
    cut[strlen(cut) - 2] = '\0';
    CHECK_REFUSED(check(pem, cut), "signature");
    jwt_keys_free(jwks);
    jwt_keys_free(pem);
}

TEST(jwt_ecdsa_algorithms)
{
    jwt_keys *jwks = jwks_keys(JWKS);
    jwt_keys *pem = pem_keys(EC256_PEM);
    jwt_keys *p384 = pem_keys(EC384_PEM);
    CHECK_VALID(check(jwks, TOK_ES256));
    CHECK_VALID(check(jwks, TOK_ES384));
    CHECK_VALID(check(jwks, TOK_ES256_NOKID));
    CHECK_VALID(check(pem, TOK_ES256));
    CHECK_VALID(check(p384, TOK_ES384));
    CHECK_REFUSED(check(jwks, corrupt_signature(TOK_ES256)), "bad signature");
    CHECK_REFUSED(check(jwks, corrupt_signature(TOK_ES384)), "bad signature");
    /* ES256 needs a P-256 key, ES384 a P-384 one */
    CHECK_REFUSED(check(p384, TOK_ES256_NOKID), "no key on its curve");
    CHECK_REFUSED(check(pem, TOK_ES384_NOKID), "no key on its curve");
    CHECK_REFUSED(check(pem, TOK_RS256), "no usable RSA key");
    jwt_keys_free(jwks);
    jwt_keys_free(pem);
    jwt_keys_free(p384);
}

TEST(jwt_mixed_key_set_and_secret)
{
    jwt_keys *k = jwks_keys(JWKS);
    const char *why = NULL;
    CHECK(jwt_keys_set_secret(k, SECRET, strlen(SECRET), &why) == 0);
    CHECK(jwt_keys_parse_pem(k, EC256_PEM, strlen(EC256_PEM), "more.pem", &why) == 0);
    CHECK_EQ_SIZE(jwt_keys_count(k), 6);
    CHECK_VALID(check(k, TOK_HS512));
    CHECK_VALID(check(k, TOK_RS256));
    CHECK_VALID(check(k, TOK_ES384));
    CHECK(jwt_keys_set_secret(k, "x", 1, &why) == -1);
    CHECK(strstr(why, "already") != NULL);
    jwt_keys_free(k);
}

/* ---- alg confusion and none ---- */

TEST(jwt_alg_confusion_is_refused)
{
    /* HS256 keyed with the bytes of rsa-a's public PEM: what a verifier
     * that feeds "the key" to whichever alg the token names would accept. */
    jwt_keys *k = pem_keys(RSA_A_PEM);
    CHECK_REFUSED(check(k, TOK_CONFUSION), "alg confusion");
    jwt_keys_free(k);
    k = jwks_keys(JWKS);
    CHECK_REFUSED(check(k, TOK_CONFUSION), "alg confusion");
    jwt_keys_free(k);
    /* and the other way round: RS/ES tokens against a secret */
    k = secret_keys(SECRET);
    CHECK_REFUSED(check(k, TOK_RS256), "only an HMAC secret");
    CHECK_REFUSED(check(k, TOK_ES256), "only an HMAC secret");
    jwt_keys_free(k);
}

TEST(jwt_alg_none_is_refused)
{
    jwt_keys *k = secret_keys(SECRET);
    char token[1024];
    const char *payload = claims_with("\"exp\":4102444800");
    const char *headers[] = {"{\"alg\":\"none\"}", "{\"alg\":\"NONE\",\"typ\":\"JWT\"}", "{\"alg\":\"n\\u006fne\"}"};
    for (size_t i = 0; i < 3; i++) {
        size_t n = base64url_encode(headers[i], strlen(headers[i]), token, sizeof token);
        token[n++] = '.';
        n += base64url_encode(payload, strlen(payload), token + n, sizeof token - n);
        token[n++] = '.';
        token[n] = '\0';
        CHECK_REFUSED(check(k, token), "alg none is not accepted");
        /* with a signature stuck on, too */
        snprintf(token + n, sizeof token - n, "c2ln");
        CHECK_REFUSED(check(k, token), "alg none is not accepted");
    }
    CHECK_REFUSED(check(k, hs256("{\"alg\":\"PS256\"}", payload, SECRET)), "unknown alg");
    CHECK_REFUSED(check(k, hs256("{\"alg\":\"hs256\"}", payload, SECRET)), "unknown alg");
    CHECK_REFUSED(check(k, hs256("{\"alg\":\"ES512\"}", payload, SECRET)), "unknown alg");
    CHECK_REFUSED(check(k, hs256("{\"typ\":\"JWT\"}", payload, SECRET)), "no alg");
    CHECK_REFUSED(check(k, hs256("{\"alg\":256}", payload, SECRET)), "alg is not a string");
    CHECK_VALID(check(k, hs256("{\"alg\":\"HS\\u0032\\u00356\"}", payload, SECRET)));
    jwt_keys_free(k);
}

/* ---- kid ---- */

TEST(jwt_kid_selects_among_keys)
{
    jwt_keys *k = jwks_keys(JWKS);
    CHECK_VALID(check(k, TOK_RS256_B));         /* kid rsa-b among two RSA keys */
    CHECK_VALID(check(k, TOK_RS256_B_NOKID));   /* no kid: every RSA key is tried */
    CHECK_REFUSED(check(k, TOK_RS256_UNKNOWN_KID), "unknown kid");
    /* kid rsa-a selects rsa-a only, though rsa-b made the signature */
    CHECK_REFUSED(check(k, TOK_RS256_KID_A_SIGNED_B), "bad signature");
    /* rsa-a's JWK says alg RS256; ec-256 is not an RSA key */
    CHECK_REFUSED(check(k, TOK_RS384_KID_A), "alg does not match the key named by kid");
    CHECK_REFUSED(check(k, TOK_ES256_KID_RSA), "alg does not match the key named by kid");
    jwt_keys_free(k);

    /* PEM keys have no kid, so they stand for any kid */
    char both[8192];
    snprintf(both, sizeof both, "%s%s", RSA_A_PEM, RSA_B_PEM);
    k = pem_keys(both);
    CHECK_EQ_SIZE(jwt_keys_count(k), 2);
    CHECK_VALID(check(k, TOK_RS256));
    CHECK_VALID(check(k, TOK_RS256_B));
    CHECK_VALID(check(k, TOK_RS256_UNKNOWN_KID));
    CHECK_VALID(check(k, TOK_RS384_KID_A));
    CHECK_VALID(check(k, TOK_RS256_KID_A_SIGNED_B));
    jwt_keys_free(k);

    k = secret_keys(SECRET);
    CHECK_VALID(check(k, hs256("{\"alg\":\"HS256\",\"kid\":\"any\"}", claims_with("\"exp\":4102444800"), SECRET)));
    CHECK_REFUSED(check(k, hs256("{\"alg\":\"HS256\",\"kid\":7}", claims_with("\"exp\":4102444800"), SECRET)),
                  "kid is not a string");
    jwt_keys_free(k);
}

/* ---- time ---- */

TEST(jwt_expiry_and_not_before)
{
    jwt_keys *k = secret_keys(SECRET);
    jwt_policy p = POLICY;
    const char *expired = hs_token("\"exp\":1799999990");
    CHECK_REFUSED(check_at(k, &p, expired, NOW, NULL), "expired");
    p.leeway_s = 9;
    CHECK_REFUSED(check_at(k, &p, expired, NOW, NULL), "expired");
    p.leeway_s = 10;
    CHECK_VALID(check_at(k, &p, expired, NOW, NULL));
    p.leeway_s = 0;
    CHECK_VALID(check_at(k, &p, expired, 1799999990, NULL)); /* exp itself */

    const char *early = hs_token("\"nbf\":1800000010");
    CHECK_REFUSED(check_at(k, &p, early, NOW, NULL), "not yet valid");
    p.leeway_s = 9;
    CHECK_REFUSED(check_at(k, &p, early, NOW, NULL), "not yet valid");
    p.leeway_s = 10;
    CHECK_VALID(check_at(k, &p, early, NOW, NULL));
    p.leeway_s = 0;
    CHECK_VALID(check_at(k, &p, early, 1800000010, NULL));

    /* a huge leeway must not wrap around */
    p.leeway_s = UINT64_MAX;
    CHECK_VALID(check_at(k, &p, hs_token("\"exp\":0,\"nbf\":18446744073709551615"), NOW, NULL));
    p.leeway_s = 0;
    CHECK_REFUSED(check_at(k, &p, hs_token("\"exp\":0"), NOW, NULL), "expired");
    CHECK_VALID(check_at(k, &p, hs_token("\"exp\":18446744073709551615"), NOW, NULL));

    CHECK_REFUSED(check(k, hs256(HS_HEADER, claims_with(""), SECRET)), "claim exp is missing");
    jwt_keys_free(k);
}

/* ---- claim types ---- */

TEST(jwt_claim_types)
{
    jwt_keys *k = secret_keys(SECRET);
    static const char *const bad_exp[] = {"\"exp\":\"4102444800\"", "\"exp\":4102444800.0", "\"exp\":4.1e9",
                                          "\"exp\":-1", "\"exp\":true", "\"exp\":null", "\"exp\":[4102444800]",
                                          "\"exp\":18446744073709551616"};
    for (size_t i = 0; i < sizeof bad_exp / sizeof bad_exp[0]; i++)
        CHECK_REFUSED(check(k, hs_token(bad_exp[i])), "claim exp is not a non-negative integer");
    CHECK_REFUSED(check(k, hs_token("\"nbf\":\"0\"")), "claim nbf is not");
    CHECK_REFUSED(check(k, hs_token("\"iat\":1.5")), "claim iat is not");
    CHECK_REFUSED(check(k, hs_token("\"rpm\":-5")), "claim rpm is not");
    CHECK_REFUSED(check(k, hs_token("\"tpm\":\"100\"")), "claim tpm is not");
    CHECK_REFUSED(check(k, hs_token("\"streams\":1e2")), "claim streams is not");

    jwt_claims c;
    CHECK_VALID(check_at(k, &POLICY, hs_token("\"rpm\":0,\"streams\":18446744073709551615"), NOW, &c));
    CHECK(c.has_rpm && c.rpm == 0);
    CHECK(!c.has_tpm && c.tpm == 0);
    CHECK(c.has_streams && c.streams == UINT64_MAX);
    CHECK_VALID(check_at(k, &POLICY, hs_token("\"tpm\":7,\"other\":{\"rpm\":\"nested, ignored\"}"), NOW, &c));
    CHECK(!c.has_rpm && c.has_tpm && c.tpm == 7 && !c.has_streams);
    jwt_keys_free(k);
}

TEST(jwt_sub_rules)
{
    jwt_keys *k = secret_keys(SECRET);
    char payload[512], sub[200];
    const char *base = "\"exp\":4102444800,\"iss\":\"https://issuer.example\",\"aud\":\"ssegate\"";
#define WITH_SUB(s) (snprintf(payload, sizeof payload, "{%s,\"sub\":%s}", base, (s)), hs256(HS_HEADER, payload, SECRET))
    snprintf(payload, sizeof payload, "{%s}", base);
    CHECK_REFUSED(check(k, hs256(HS_HEADER, payload, SECRET)), "claim sub is missing");
    CHECK_REFUSED(check(k, WITH_SUB("42")), "claim sub is not a string");
    CHECK_REFUSED(check(k, WITH_SUB("\"\"")), "claim sub is empty");
    CHECK_REFUSED(check(k, WITH_SUB("\"a\\nb\"")), "control characters");
    CHECK_REFUSED(check(k, WITH_SUB("\"a\\u0000b\"")), "control characters");
    CHECK_REFUSED(check(k, WITH_SUB("\"a\\u007fb\"")), "control characters");
    CHECK_REFUSED(check(k, WITH_SUB("\"a\tb\"")), "payload is not a JSON object"); /* raw control: not JSON */
    CHECK_REFUSED(check(k, WITH_SUB("\"\\ud800\"")), "payload is not a JSON object"); /* lone surrogate */

    memset(sub, 'x', 200);
    sub[0] = '"';
    sub[128] = '"';
    sub[129] = '\0'; /* 127 bytes between the quotes */
    jwt_claims c;
    CHECK_VALID(check_at(k, &POLICY, WITH_SUB(sub), NOW, &c));
    CHECK_EQ_SIZE(strlen(c.sub), 127);
    sub[128] = 'x';
    sub[129] = '"';
    sub[130] = '\0';
    CHECK_REFUSED(check(k, WITH_SUB(sub)), "longer than 127 bytes");
    /* escapes count by what they stand for: 127 x's spelled with \u0078 at the end */
    snprintf(sub, sizeof sub, "\"%.*s\\u0078\"", 126, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                                                     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    CHECK_VALID(check_at(k, &POLICY, WITH_SUB(sub), NOW, &c));
    CHECK_EQ_SIZE(strlen(c.sub), 127);

    CHECK_VALID(check_at(k, &POLICY, WITH_SUB("\"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\" \\/\""), NOW, &c));
    CHECK_STR(c.sub, "caf\xc3\xa9 \xf0\x9f\x98\x80 \"q\" /");
#undef WITH_SUB
    jwt_keys_free(k);

    /* the same sub, raw UTF-8, from node through RS256 */
    k = jwks_keys(JWKS);
    CHECK_VALID(check_at(k, &POLICY, TOK_RS256_SUB_ESCAPED, NOW, &c));
    CHECK_STR(c.sub, "caf\xc3\xa9 \xf0\x9f\x98\x80");
    jwt_keys_free(k);
}

/* ---- issuer and audience ---- */

TEST(jwt_issuer_and_audience)
{
    jwt_keys *k = secret_keys(SECRET);
    const char *payload;
#define TOKEN(json) hs256(HS_HEADER, (json), SECRET)
    payload = "{\"exp\":4102444800,\"sub\":\"u\",\"iss\":\"https://other.example\",\"aud\":\"ssegate\"}";
    CHECK_REFUSED(check(k, TOKEN(payload)), "wrong issuer");
    payload = "{\"exp\":4102444800,\"sub\":\"u\",\"aud\":\"ssegate\"}";
    CHECK_REFUSED(check(k, TOKEN(payload)), "claim iss is missing");
    payload = "{\"exp\":4102444800,\"sub\":\"u\",\"iss\":[\"https://issuer.example\"],\"aud\":\"ssegate\"}";
    CHECK_REFUSED(check(k, TOKEN(payload)), "claim iss is not a string");
    payload = "{\"exp\":4102444800,\"sub\":\"u\",\"iss\":\"https:\\/\\/issuer.example\",\"aud\":\"ssegate\"}";
    CHECK_VALID(check(k, TOKEN(payload)));
    payload = "{\"exp\":4102444800,\"sub\":\"u\",\"iss\":\"https://issuer.example/\",\"aud\":\"ssegate\"}";
    CHECK_REFUSED(check(k, TOKEN(payload)), "wrong issuer");

    payload = "{\"exp\":4102444800,\"sub\":\"u\",\"iss\":\"https://issuer.example\",\"aud\":\"other\"}";
    CHECK_REFUSED(check(k, TOKEN(payload)), "wrong audience");
    payload = "{\"exp\":4102444800,\"sub\":\"u\",\"iss\":\"https://issuer.example\",\"aud\":\"ssegatex\"}";
    CHECK_REFUSED(check(k, TOKEN(payload)), "wrong audience");
    payload = "{\"exp\":4102444800,\"sub\":\"u\",\"iss\":\"https://issuer.example\"}";
    CHECK_REFUSED(check(k, TOKEN(payload)), "claim aud is missing");
    payload = "{\"exp\":4102444800,\"sub\":\"u\",\"iss\":\"https://issuer.example\",\"aud\":[\"a\",\"ssegate\",\"b\"]}";
    CHECK_VALID(check(k, TOKEN(payload)));
    payload = "{\"exp\":4102444800,\"sub\":\"u\",\"iss\":\"https://issuer.example\",\"aud\":[\"a\",\"b\"]}";
    CHECK_REFUSED(check(k, TOKEN(payload)), "wrong audience");
    payload = "{\"exp\":4102444800,\"sub\":\"u\",\"iss\":\"https://issuer.example\",\"aud\":[]}";
    CHECK_REFUSED(check(k, TOKEN(payload)), "wrong audience");
    payload = "{\"exp\":4102444800,\"sub\":\"u\",\"iss\":\"https://issuer.example\",\"aud\":[\"ssegate\",1]}";
    CHECK_REFUSED(check(k, TOKEN(payload)), "claim aud is not a string or an array of strings");
    payload = "{\"exp\":4102444800,\"sub\":\"u\",\"iss\":\"https://issuer.example\",\"aud\":[[\"ssegate\"]]}";
    CHECK_REFUSED(check(k, TOKEN(payload)), "claim aud is not a string or an array of strings");
    payload = "{\"exp\":4102444800,\"sub\":\"u\",\"iss\":\"https://issuer.example\",\"aud\":{\"x\":\"ssegate\"}}";
    CHECK_REFUSED(check(k, TOKEN(payload)), "claim aud is not a string or an array of strings");

    /* a policy without issuer or audience checks only their types */
    jwt_policy open = {NULL, NULL, 0};
    payload = "{\"exp\":4102444800,\"sub\":\"u\",\"iss\":\"anyone\",\"aud\":[\"x\"]}";
    CHECK_VALID(check_at(k, &open, TOKEN(payload), NOW, NULL));
    payload = "{\"exp\":4102444800,\"sub\":\"u\"}";
    CHECK_VALID(check_at(k, &open, TOKEN(payload), NOW, NULL));
    CHECK_VALID(check_at(k, NULL, TOKEN(payload), NOW, NULL));
    payload = "{\"exp\":4102444800,\"sub\":\"u\",\"aud\":5}";
    CHECK_REFUSED(check_at(k, &open, TOKEN(payload), NOW, NULL), "claim aud is not");
#undef TOKEN
    jwt_keys_free(k);
}

/* ---- malformed tokens ---- */

static const char *b64_join(const char *header, const char *payload, const char *sig_b64)
{
    static char token[4096];
    size_t n = base64url_encode(header, strlen(header), token, sizeof token);
    token[n++] = '.';
    n += base64url_encode(payload, strlen(payload), token + n, sizeof token - n);
    snprintf(token + n, sizeof token - n, ".%s", sig_b64);
    return token;
}

TEST(jwt_malformed_tokens)
{
    jwt_keys *k = secret_keys(SECRET);
    const char *good = claims_with("\"exp\":4102444800");
    CHECK_REFUSED(check(k, ""), "token is empty");
    CHECK_REFUSED(check(k, "abc"), "three dot-separated parts");
    CHECK_REFUSED(check(k, "abc.def"), "three dot-separated parts");
    CHECK_REFUSED(check(k, "a.b.c.d"), "three dot-separated parts");
    char buf[JWT_MAX_TOKEN + 16];
    snprintf(buf, sizeof buf, "%s.", TOK_HS256);
    CHECK_REFUSED(check(k, buf), "three dot-separated parts");
    snprintf(buf, sizeof buf, "%s.c2ln", TOK_HS256);
    CHECK_REFUSED(check(k, buf), "three dot-separated parts");

    CHECK_REFUSED(check(k, b64_join(HS_HEADER, good, "")), "no signature");
    CHECK_REFUSED(check(k, b64_join(HS_HEADER, good, "c2ln=")), "padding");
    CHECK_REFUSED(check(k, b64_join(HS_HEADER, good, "c2l+")), "signature is not base64url");
    CHECK_REFUSED(check(k, b64_join(HS_HEADER, good, "c2lo")), "bad signature");
    CHECK_REFUSED(check(k, "e*.e30.c2ln"), "header is not base64url");
    CHECK_REFUSED(check(k, "eyJhbGciOiJIUzI1NiJ9.e3.c2ln"), "payload is not base64url");
    /* a padded header: {"alg":"HS256"} is 15 bytes, padded to 20 characters */
    CHECK_REFUSED(check(k, "eyJhbGciOiJIUzI1NiJ9=.e30.c2ln"), "padding");
    snprintf(buf, sizeof buf, "%s", TOK_HS256);
    buf[3] = ' ';
    CHECK_REFUSED(check(k, buf), "header is not base64url");

    /* structure, signed, so that the JSON checks are what is reached */
    CHECK_REFUSED(check(k, hs256(HS_HEADER, "{\"exp\":4102444800,\"sub\":\"u\"}x", SECRET)), "payload is not a JSON object");
    CHECK_REFUSED(check(k, hs256(HS_HEADER, "{\"exp\":4102444800,\"sub\":\"u\"}{}", SECRET)), "payload is not a JSON object");
    CHECK_REFUSED(check(k, hs256("{\"alg\":\"HS256\"} x", good, SECRET)), "header is not a JSON object");
    CHECK_REFUSED(check(k, hs256("[\"HS256\"]", good, SECRET)), "header is not a JSON object");
    CHECK_REFUSED(check(k, hs256("\"HS256\"", good, SECRET)), "header is not a JSON object");
    CHECK_REFUSED(check(k, hs256("", good, SECRET)), "header is not a JSON object");
    CHECK_REFUSED(check(k, hs256(HS_HEADER, "[1]", SECRET)), "payload is not a JSON object");
    CHECK_REFUSED(check(k, hs256(HS_HEADER, "{\"exp\":4102444800,}", SECRET)), "payload is not a JSON object");
    CHECK_REFUSED(check(k, hs256(HS_HEADER, "{\"exp\" 4102444800}", SECRET)), "payload is not a JSON object");
    CHECK_REFUSED(check(k, hs256(HS_HEADER, "{\"exp\":0123}", SECRET)), "payload is not a JSON object");
    CHECK_REFUSED(check(k, hs256(HS_HEADER, "{\"exp\":tru}", SECRET)), "payload is not a JSON object");
    CHECK_REFUSED(check(k, hs256(HS_HEADER, "{\"a\":\"\\x\"}", SECRET)), "payload is not a JSON object");
    /* white space around the JSON is JSON */
    CHECK_VALID(check(k, hs256(" {\"alg\" : \"HS256\"}\n", "\t{\"exp\":4102444800, \"sub\":\"u\", "
                                                           "\"iss\":\"https://issuer.example\",\"aud\":\"ssegate\"} ",
                               SECRET)));
    /* a NUL after the object (jsmn would stop there) */
    char nul_payload[] = "{\"exp\":4102444800,\"sub\":\"u\",\"iss\":\"https://issuer.example\",\"aud\":\"ssegate\"}\0";
    {
        char token[1024];
        size_t n = base64url_encode(HS_HEADER, strlen(HS_HEADER), token, sizeof token);
        token[n++] = '.';
        n += base64url_encode(nul_payload, sizeof nul_payload, token + n, sizeof token - n);
        token[n] = '\0';
        /* sign what we built */
        br_hmac_key_context kc;
        br_hmac_context hc;
        unsigned char mac[32];
        br_hmac_key_init(&kc, &br_sha256_vtable, SECRET, strlen(SECRET));
        br_hmac_init(&hc, &kc, 0);
        br_hmac_update(&hc, token, n);
        br_hmac_out(&hc, mac);
        token[n++] = '.';
        n += base64url_encode(mac, sizeof mac, token + n, sizeof token - n);
        token[n] = '\0';
        CHECK_REFUSED(check(k, token), "payload is not a JSON object");
    }

    /* duplicates, also when spelled differently */
    CHECK_REFUSED(check(k, hs_token("\"sub\":\"admin\"")), "duplicate claim");
    CHECK_REFUSED(check(k, hs_token("\"s\\u0075b\":\"admin\"")), "duplicate claim");
    CHECK_REFUSED(check(k, hs_token("\"exp\":1,\"exp\":4102444800")), "duplicate claim");
    CHECK_REFUSED(check(k, hs256("{\"alg\":\"HS256\",\"alg\":\"HS256\"}", good, SECRET)), "duplicate header member");
    CHECK_REFUSED(check(k, hs256("{\"alg\":\"HS256\",\"kid\":\"a\",\"k\\u0069d\":\"b\"}", good, SECRET)),
                  "duplicate header member");
    CHECK_REFUSED(check(k, hs256("{\"alg\":\"HS256\",\"crit\":[\"exp\"],\"exp\":1}", good, SECRET)), "crit");
    /* nested duplicates are not claims */
    CHECK_VALID(check(k, hs_token("\"ctx\":{\"a\":1,\"a\":2}")));
    jwt_keys_free(k);
}

TEST(jwt_token_size_limit)
{
    jwt_keys *k = secret_keys(SECRET);
    /* grow a padding claim until the token is exactly 8 KiB */
    char extra[JWT_MAX_TOKEN];
    const char *token = NULL;
    for (size_t pad = 5000; pad < 7000; pad++) {
        snprintf(extra, sizeof extra, "\"pad\":\"%0*d\"", (int)pad, 0);
        token = hs_token(extra);
        if (strlen(token) >= JWT_MAX_TOKEN)
            break;
    }
    CHECK_EQ_SIZE(strlen(token), JWT_MAX_TOKEN);
    CHECK_VALID(check(k, token));
    size_t len = strlen(extra);
    extra[len - 1] = '0';
    snprintf(extra + len, sizeof extra - len, "00\"");
    token = hs_token(extra);
    CHECK(strlen(token) > JWT_MAX_TOKEN);
    CHECK_REFUSED(check(k, token), "token is longer than 8 KiB");
    char big[JWT_MAX_TOKEN + 2];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    CHECK_REFUSED(check(k, big), "token is longer than 8 KiB");
    /* many small values: past the token budget, refused, not overrun */
    char many[4096] = "\"many\":[";
    size_t n = strlen(many);
    for (int i = 0; i < 600; i++)
        n += (size_t)snprintf(many + n, sizeof many - n, "%s1", i ? "," : "");
    snprintf(many + n, sizeof many - n, "]");
    CHECK_REFUSED(check(k, hs_token(many)), "payload has too many JSON values");
    jwt_keys_free(k);
}

/* ---- key loading ---- */

static char temp_paths[8][64];
static size_t temp_count;

/* A temporary file holding `len` bytes; removed by remove_temps. */
static const char *temp_file(const char *content, size_t len)
{
    char *path = temp_paths[temp_count++];
    snprintf(path, sizeof temp_paths[0], "/tmp/ssegate-jwt-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, content, len) != (ssize_t)len)
        unit_fail(__FILE__, __LINE__, "cannot write temp file %s", path);
    if (fd >= 0)
        close(fd);
    return path;
}

static void remove_temps(void)
{
    for (size_t i = 0; i < temp_count; i++)
        unlink(temp_paths[i]);
    temp_count = 0;
}

TEST(jwt_load_files)
{
    char pem[16384];
    snprintf(pem, sizeof pem, "# keys for the gateway\n%s%s%s\n%s%s", RSA_A_PEM, EC_PARAMS_PEM, EC256_PEM,
             EC256_CERT_PEM, RSA_A_PKCS1_PEM);
    const char *pem_path = temp_file(pem, strlen(pem));
    const char *jwks_path = temp_file(JWKS, strlen(JWKS));
    char secret[128];
    snprintf(secret, sizeof secret, "%s\r\n", SECRET);
    const char *secret_path = temp_file(secret, strlen(secret));

    jwt_keys *k = jwt_keys_new();
    const char *why = NULL;
    CHECK(jwt_keys_load_public(k, pem_path, &why) == 0);
    CHECK_EQ_SIZE(jwt_keys_count(k), 4); /* EC PARAMETERS are skipped */
    CHECK_VALID(check(k, TOK_RS256));
    CHECK_VALID(check(k, TOK_ES256));
    CHECK(jwt_keys_load_public(k, jwks_path, &why) == 0);
    CHECK_EQ_SIZE(jwt_keys_count(k), 8);
    CHECK(jwt_keys_load_secret(k, secret_path, &why) == 0);
    CHECK_EQ_SIZE(jwt_keys_count(k), 9);
    CHECK_VALID(check(k, TOK_HS256));
    CHECK_VALID(check(k, TOK_RS512));
    CHECK_VALID(check(k, TOK_ES384));
    CHECK(jwt_keys_load_secret(k, secret_path, &why) == -1);
    CHECK(strstr(why, "already") != NULL && strstr(why, secret_path) != NULL);
    jwt_keys_free(k);

    /* only a newline: empty */
    k = jwt_keys_new();
    CHECK(jwt_keys_load_secret(k, temp_file("\n", 1), &why) == -1);
    CHECK(strstr(why, "is empty") != NULL);
    CHECK(jwt_keys_load_secret(k, temp_file("", 0), &why) == -1);
    CHECK(strstr(why, "is empty") != NULL);
    /* only one line end is removed */
    CHECK(jwt_keys_load_secret(k, temp_file("s\n\n", 3), &why) == 0);
    CHECK(check(k, hs256(HS_HEADER, claims_with("\"exp\":4102444800"), "s\n")) == NULL);
    CHECK(jwt_keys_load_public(k, "/nonexistent/keys.pem", &why) == -1);
    CHECK(strstr(why, "cannot open") != NULL && strstr(why, "/nonexistent/keys.pem") != NULL);
    CHECK(jwt_keys_load_secret(k, "/nonexistent/secret", &why) == -1);
    CHECK(strstr(why, "/nonexistent/secret") != NULL);
    CHECK(jwt_keys_load_public(k, "/tmp", &why) == -1);
    CHECK(strstr(why, "cannot read public key file /tmp") != NULL);
    size_t huge_len = 1024 * 1024 + 1;
    char *huge = malloc(huge_len);
    memset(huge, '\n', huge_len);
    CHECK(jwt_keys_load_public(k, temp_file(huge, huge_len), &why) == -1);
    CHECK(strstr(why, "larger than 1 MiB") != NULL);
    CHECK(jwt_keys_load_public(k, temp_file(huge, huge_len - 1), &why) == -1);
    CHECK(strstr(why, "no public key found") != NULL);
    free(huge);
    CHECK_EQ_SIZE(jwt_keys_count(k), 1);
    jwt_keys_free(k);
    remove_temps();
}

/* The message of a failed PEM parse (which must add no key). */
static const char *pem_error(const char *text)
{
    static char msg[512];
    jwt_keys *k = jwt_keys_new();
    const char *why = NULL;
    int rc = jwt_keys_parse_pem(k, text, strlen(text), "keys.pem", &why);
    snprintf(msg, sizeof msg, "%s", rc == 0 ? "(accepted)" : why);
    if (rc != 0 && jwt_keys_count(k) != 0)
        unit_fail(__FILE__, __LINE__, "a failed parse left %zu keys", jwt_keys_count(k));
    jwt_keys_free(k);
    return msg;
}

static const char *jwks_error(const char *text)
{
    static char msg[512];
    jwt_keys *k = jwt_keys_new();
    const char *why = NULL;
    int rc = jwt_keys_parse_jwks(k, text, strlen(text), "keys.json", &why);
    snprintf(msg, sizeof msg, "%s", rc == 0 ? "(accepted)" : why);
    if (rc != 0 && jwt_keys_count(k) != 0)
        unit_fail(__FILE__, __LINE__, "a failed parse left %zu keys", jwt_keys_count(k));
    jwt_keys_free(k);
    return msg;
}

#define CHECK_MSG(got, want)                                                               \
    do {                                                                                   \
        const char *got_ = (got);                                                          \
        if (strstr(got_, (want)) == NULL)                                                  \
            unit_fail(__FILE__, __LINE__, "%s: wanted \"%s\", got \"%s\"", #got, (want), got_); \
    } while (0)

TEST(jwt_pem_errors)
{
    char text[8192];
    CHECK_MSG(pem_error(""), "keys.pem: no public key found");
    CHECK_MSG(pem_error("just some text\n"), "no public key found");
    CHECK_MSG(pem_error(EC_PARAMS_PEM), "no public key found");
    CHECK_MSG(pem_error("a\nb\n-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n"),
              "keys.pem line 3: \"PRIVATE KEY\" is a private key");
    CHECK_MSG(pem_error("-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n"), "private key");
    CHECK_MSG(pem_error("-----BEGIN FOO-----\nMAA=\n-----END FOO-----\n"), "unexpected PEM object \"FOO\"");
    CHECK_MSG(pem_error("x\n-----BEGIN PUBLIC KEY-----\nMA*A\n-----END PUBLIC KEY-----\n"), "keys.pem line 3: malformed PEM");
    CHECK_MSG(pem_error("-----BEGIN PUBLIC KEY-----\nMAA=\n"), "line 1: PEM object \"PUBLIC KEY\" has no END line");
    CHECK_MSG(pem_error("-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----\n"), "has no algorithm identifier");
    CHECK_MSG(pem_error("-----BEGIN PUBLIC KEY-----\nAgEB\n-----END PUBLIC KEY-----\n"), "not a DER SubjectPublicKeyInfo");
    CHECK_MSG(pem_error(RSA_1024_PEM), "shorter than 2048 bits");
    CHECK_MSG(pem_error(EC521_PEM), "P-521 is not supported");
    CHECK_MSG(pem_error(ED25519_PEM), "Ed25519");
    /* a good key, then a bad one: nothing is added */
    snprintf(text, sizeof text, "%s%s", EC256_PEM, RSA_1024_PEM);
    CHECK_MSG(pem_error(text), "keys.pem line 5: PUBLIC KEY: RSA modulus is shorter");
    /* a last line without its newline still counts */
    snprintf(text, sizeof text, "%s", EC256_PEM);
    text[strlen(text) - 1] = '\0';
    CHECK_MSG(pem_error(text), "(accepted)");
}

TEST(jwt_der_parser)
{
    jwt_keys *k = jwt_keys_new();
    const char *why = NULL;
    CHECK(jwt_keys_parse_der(k, JWT_DER_SPKI, EC256_SPKI_DER, sizeof EC256_SPKI_DER, "der", &why) == 0);
    CHECK_EQ_SIZE(jwt_keys_count(k), 1);
    CHECK_VALID(check(k, TOK_ES256));
    /* every truncation fails cleanly */
    for (size_t len = 0; len < sizeof EC256_SPKI_DER; len++)
        CHECK(jwt_keys_parse_der(k, JWT_DER_SPKI, EC256_SPKI_DER, len, "der", &why) == -1);
    unsigned char buf[sizeof EC256_SPKI_DER + 4];
    memcpy(buf, EC256_SPKI_DER, sizeof EC256_SPKI_DER);
    buf[sizeof EC256_SPKI_DER] = 0;
    CHECK(jwt_keys_parse_der(k, JWT_DER_SPKI, buf, sizeof EC256_SPKI_DER + 1, "der", &why) == -1);
    CHECK(strstr(why, "not a DER SubjectPublicKeyInfo") != NULL);
    /* a point off the curve */
    buf[sizeof EC256_SPKI_DER - 1] ^= 1;
    CHECK(jwt_keys_parse_der(k, JWT_DER_SPKI, buf, sizeof EC256_SPKI_DER, "der", &why) == -1);
    CHECK(strstr(why, "not on the curve") != NULL);
    buf[sizeof EC256_SPKI_DER - 1] ^= 1;
    /* a compressed point */
    buf[26] = 0x02;
    CHECK(jwt_keys_parse_der(k, JWT_DER_SPKI, buf, sizeof EC256_SPKI_DER, "der", &why) == -1);
    CHECK(strstr(why, "uncompressed") != NULL);
    buf[26] = 0x04;
    /* a non-minimal length: 0x59 spelled 0x81 0x59 */
    unsigned char longer[sizeof EC256_SPKI_DER + 1] = {0x30, 0x81};
    memcpy(longer + 2, EC256_SPKI_DER + 1, sizeof EC256_SPKI_DER - 1);
    CHECK(jwt_keys_parse_der(k, JWT_DER_SPKI, longer, sizeof longer, "der", &why) == -1);
    /* indefinite length */
    buf[1] = 0x80;
    CHECK(jwt_keys_parse_der(k, JWT_DER_SPKI, buf, sizeof EC256_SPKI_DER, "der", &why) == -1);
    CHECK(jwt_keys_parse_der(k, JWT_DER_CERTIFICATE, EC256_SPKI_DER, sizeof EC256_SPKI_DER, "der", &why) == -1);
    CHECK(strstr(why, "der: certificate") != NULL || strstr(why, "der: not a DER certificate") != NULL);
    CHECK(jwt_keys_parse_der(k, JWT_DER_PKCS1_RSA, EC256_SPKI_DER, sizeof EC256_SPKI_DER, "der", &why) == -1);
    CHECK_EQ_SIZE(jwt_keys_count(k), 1);
    jwt_keys_free(k);
}

TEST(jwt_jwks_errors)
{
    CHECK_MSG(jwks_error("{\"keys\":[\n{\"kty\":\"RSA\"},\n"), "keys.json line");
    CHECK_MSG(jwks_error("{\"keys\":[]}\nx"), "keys.json line 2: not a valid JSON object");
    CHECK_MSG(jwks_error("[]"), "not a valid JSON object");
    CHECK_MSG(jwks_error("{\"key\":[]}"), "no \"keys\" array");
    CHECK_MSG(jwks_error("{\"keys\":{}}"), "no \"keys\" array");
    CHECK_MSG(jwks_error("{\"keys\":[],\"keys\":[]}"), "duplicate member");
    CHECK_MSG(jwks_error("{\"keys\":[]}"), "no usable key (0 skipped");
    CHECK_MSG(jwks_error("{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AA\"},"
                         "{\"kty\":\"RSA\",\"use\":\"enc\",\"n\":\"AA\",\"e\":\"AQAB\"},"
                         "{\"kty\":\"RSA\",\"alg\":\"PS256\",\"n\":\"AA\",\"e\":\"AQAB\"},"
                         "{\"kty\":\"EC\",\"crv\":\"P-521\",\"x\":\"AA\",\"y\":\"AA\"}]}"),
              "no usable key (4 skipped");
    CHECK_MSG(jwks_error("{\"keys\":[\n1]}"), "keys.json line 2: key 1 is not a JSON object");
    CHECK_MSG(jwks_error("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AA\",\"e\":\"AQAB\",\"d\":\"AA\"}]}"), "private");
    CHECK_MSG(jwks_error("{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}]}"), "member k");
    CHECK_MSG(jwks_error("{\"keys\":[{\"n\":\"AA\"}]}"), "key 1 has no kty");
    CHECK_MSG(jwks_error("{\"keys\":[{\"kty\":\"RSA\",\"kty\":\"RSA\"}]}"), "key 1 has a duplicate member");
    CHECK_MSG(jwks_error("{\"keys\":[{\"kty\":\"RSA\",\"e\":\"AQAB\"}]}"), "member n is missing");
    CHECK_MSG(jwks_error("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\"}]}"), "member e is missing");
    CHECK_MSG(jwks_error("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQ==\"}]}"), "member e is not base64url");
    CHECK_MSG(jwks_error("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":65537}]}"), "member e is not a string");
    CHECK_MSG(jwks_error("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}"), "shorter than 2048");
    CHECK_MSG(jwks_error("{\"keys\":[{\"kty\":\"RSA\",\"alg\":\"ES256\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}"),
              "alg ES256 does not fit kty RSA");
    CHECK_MSG(jwks_error("{\"keys\":[{\"kty\":\"EC\",\"x\":\"AA\",\"y\":\"AA\"}]}"), "no crv");
    CHECK_MSG(jwks_error("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AA\",\"y\":\"AA\"}]}"),
              "x and y must each be 32 bytes");
    CHECK_MSG(jwks_error("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"alg\":\"ES384\",\"x\":\"AA\",\"y\":\"AA\"}]}"),
              "alg ES384 does not fit");
    CHECK_MSG(jwks_error("{\"keys\":[{\"kty\":\"RSA\",\"kid\":3,\"n\":\"AA\",\"e\":\"AQAB\"}]}"), "kid is not a string");

    /* ec-256 from the fixture with its y changed: off the curve */
    char text[8192];
    snprintf(text, sizeof text, "%s", JWKS);
    char *ec = strstr(text, "\"ec-256\"");
    char *y = ec ? strstr(ec, "\"y\": \"") : NULL;
    CHECK(y != NULL);
    if (y != NULL) {
        y += 6;
        y[3] = y[3] == 'A' ? 'B' : 'A';
        CHECK_MSG(jwks_error(text), "not on the curve");
    }

    /* a good file, then a failing parse on the same set: the set is unchanged */
    jwt_keys *k = jwks_keys(JWKS);
    const char *why = NULL;
    const char *bad = "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AA\",\"y\":\"AA\"}]}";
    CHECK(jwt_keys_parse_jwks(k, bad, strlen(bad), "bad.json", &why) == -1);
    CHECK(strstr(why, "bad.json line 1: key 1") != NULL);
    CHECK_EQ_SIZE(jwt_keys_count(k), 4);
    CHECK_VALID(check(k, TOK_ES256));
    jwt_keys_free(k);
}

TEST(jwt_claims_are_cleared_on_failure)
{
    jwt_keys *k = secret_keys(SECRET);
    jwt_claims c;
    memset(&c, 0x5a, sizeof c);
    const char *why = NULL;
    CHECK(jwt_verify(k, &POLICY, slice_of(hs_token("\"exp\":1")), NOW, &c, &why) == -1);
    CHECK(c.sub[0] == '\0' && !c.has_rpm && c.exp == 0);
    CHECK(why != NULL && strstr(why, "expired") != NULL);
    jwt_keys_free(k);
    k = jwt_keys_new();
    CHECK_EQ_SIZE(jwt_keys_count(k), 0);
    CHECK_REFUSED(check(k, TOK_HS256), "no key is configured");
    CHECK_REFUSED(check(k, TOK_RS256), "no key is configured");
    jwt_keys_free(k);
}
