# Copyright (c) mmrefseg contributors. All rights reserved.
"""tools/webui.py in a real browser: headless Chromium (Debian's chromium +
chromium-driver) driven by Selenium, against the server started as a user starts it.

Marker ``browser``: deselected unless ``--browser`` (tests/conftest.py); .ci/run installs
Chromium, the ``[demo]`` extra (Gradio) and Selenium and runs
``python -m pytest -q --browser -m browser tests``. Nothing here is skipped: without them
the tests fail and say what to install.

The server runs the tiny config with a random-weight checkpoint this module writes, from
another folder (no cwd-relative path), with every outbound connection routed to a local
sentinel proxy that counts them (must stay 0: the page works offline); the browser can
resolve no host but 127.0.0.1 and logs every request it makes (all must be local).
"""
import base64
import json
import os
import os.path as osp
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest

# torch / mmrefseg / selenium / gradio are imported in the fixtures and tests, so that
# collecting this module (test_webui.py checks the marker logic that way) stays cheap.
pytestmark = pytest.mark.browser

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(REPO, 'configs/mpg_lqgnet_tiny_refer.py')
IMAGE = osp.join(REPO, 'tests/data/tiny_refer/images/mscoco/images/train2014/'
                 '000000039769.jpg')  # 640×480
SENTENCES = ['the cat on the left', 'the remote']
MAX_PIXELS = 400_000  # the fixture photo (307 200 px) fits, an 800×600 image does not
CHROMIUM, CHROMEDRIVER = '/usr/bin/chromium', '/usr/bin/chromedriver'
INSTALL = ('apt-get install -y chromium chromium-driver && pip install -e ".[demo]" '
           '"selenium>=4.20,<5"')
TIMEOUT = 120  # s, for one page action on a loaded 2-core machine


def unused_port():
    """A port for the module's server. Not the suite's ``free_port`` fixture: that one is
    per test and keeps its port bound, while this server lives for the whole module and
    Gradio checks that its port is free before it binds it."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class SentinelProxy:
    """A local 'proxy' that only counts the connections made to it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(16)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    import torch
    from mmengine.runner import save_checkpoint

    from mmrefseg.apis import init_model
    torch.manual_seed(0)
    model = init_model(CONFIG, device='cpu')
    path = str(tmp_path_factory.mktemp('ckpt') / 'tiny_random.pth')
    save_checkpoint(dict(state_dict=model.state_dict()), path)
    return path


@pytest.fixture(scope='module')
def reference_model(checkpoint):
    from mmrefseg.apis import init_model
    return init_model(CONFIG, checkpoint, device='cpu')


@pytest.fixture(scope='module')
def server(checkpoint, tmp_path_factory):
    import importlib.util
    if importlib.util.find_spec('gradio') is None:
        pytest.fail(f'the browser test needs Gradio (the [demo] extra); install: {INSTALL}')
    work = tmp_path_factory.mktemp('server')
    port = unused_port()
    proxy = SentinelProxy()
    proxy_url = f'http://127.0.0.1:{proxy.port}'
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1',
               HTTP_PROXY=proxy_url, HTTPS_PROXY=proxy_url, ALL_PROXY=proxy_url,
               http_proxy=proxy_url, https_proxy=proxy_url, all_proxy=proxy_url,
               NO_PROXY='127.0.0.1,localhost', no_proxy='127.0.0.1,localhost',
               GRADIO_TEMP_DIR=str(work / 'gradio'))
    env.pop('GRADIO_ANALYTICS_ENABLED', None)  # the tool must switch analytics off itself
    log_path = work / 'server.log'
    log = open(log_path, 'w')
    proc = subprocess.Popen(
        [sys.executable, osp.join(REPO, 'tools', 'webui.py'), CONFIG, checkpoint,
         '--port', str(port), '--max-pixels', str(MAX_PIXELS), '--max-sentences', '3',
         '--num-examples', '2'],
        cwd=str(work), env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f'http://127.0.0.1:{port}/'
    deadline = time.time() + 300
    while True:
        if proc.poll() is not None:
            pytest.fail(f'tools/webui.py exited ({proc.returncode}):\n'
                        f'{log_path.read_text()[-6000:]}')
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert time.time() < deadline, f'no page at {url}:\n{log_path.read_text()[-6000:]}'
        time.sleep(1)
    yield dict(url=url, port=port, log=log_path, proxy=proxy, work=work)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    log.close()
    proxy.close()


@pytest.fixture(scope='module')
def browser(server, tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        pytest.fail(f'the browser test needs Selenium ({e}); install: {INSTALL}')
    for exe in (CHROMIUM, CHROMEDRIVER):
        assert osp.isfile(exe), f'{exe} is missing; install: {INSTALL}'
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
                 '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync',
                 '--disable-dev-shm-usage', '--window-size=1400,1000',
                 f'--user-data-dir={tmp_path_factory.mktemp("chromium-profile")}',
                 # no network: only this machine's loopback resolves
                 '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1'):
        opts.add_argument(flag)
    opts.set_capability('goog:loggingPrefs', {'performance': 'ALL', 'browser': 'ALL'})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(TIMEOUT)
    try:
        driver.get(server['url'])
        wait_for(driver, lambda d: d.find_elements('css selector', '#run'))
        yield driver
    finally:
        driver.quit()


# ----------------------------------------------------------------------------- helpers
def wait_for(driver, condition, timeout=TIMEOUT, what='the page'):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(
        condition, message=f'timed out waiting for {what}')


def last_request(server) -> int:
    found = re.findall(r'webui: request (\d+) ', server['log'].read_text())
    return max(map(int, found)) if found else 0


def shown(driver, elem_id) -> bool:
    """Whether the element is on the page (Gradio leaves hidden blocks out of the DOM)."""
    found = driver.find_elements('css selector', f'#{elem_id}')
    return bool(found) and found[0].is_displayed()


def status_text(driver) -> str:
    return driver.find_element('css selector', '#status').text


REMOVE = '#image button[aria-label="Remove Image"]'


def set_image(driver, path, expect_upload=True):
    """Upload ``path`` through the image box's file input (as choosing it in the dialog
    does) and wait until the upload is in (the box shows its remove button)."""
    remove = driver.find_elements('css selector', REMOVE)
    if remove:
        remove[0].click()
        wait_for(driver, lambda d: not d.find_elements('css selector', REMOVE),
                 what='the image box to empty')
    driver.find_element('css selector', '#image input[type=file]').send_keys(path)
    if expect_upload:
        wait_for(driver, lambda d: d.find_elements('css selector', REMOVE),
                 what=f'the upload of {path}')


def set_sentences(driver, text):
    from selenium.webdriver.common.keys import Keys
    box = driver.find_element('css selector', '#sentences textarea')
    box.click()
    box.send_keys(Keys.CONTROL, 'a')
    box.send_keys(Keys.DELETE)
    for i, line in enumerate(text.split('\n')):
        if i:
            box.send_keys(Keys.ENTER)  # a new line (several-line box: Enter does not run)
        box.send_keys(line)
    wait_for(driver, lambda d: box.get_attribute('value') == text, what='the sentences')


def run_and_wait(driver, server) -> str:
    """Click the run button; the status line of this request (its number is in it)."""
    n = last_request(server) + 1
    driver.find_element('css selector', '#run').click()
    wait_for(driver, lambda d: f'(request {n})' in status_text(d), what=f'request {n}')
    return status_text(driver)


def fetch_png(url) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as r:
        data = r.read()
    assert data[:8] == b'\x89PNG\r\n\x1a\n', f'{url} is not a PNG'
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def full_page_screenshot(driver, path):
    metrics = driver.execute_cdp_cmd('Page.getLayoutMetrics', {})
    size = metrics.get('cssContentSize', metrics['contentSize'])
    shot = driver.execute_cdp_cmd('Page.captureScreenshot', dict(
        format='png', captureBeyondViewport=True,
        clip=dict(x=0, y=0, width=size['width'], height=size['height'], scale=1)))
    with open(path, 'wb') as f:
        f.write(base64.b64decode(shot['data']))
    return path


def requested_urls(driver):
    """Every network URL the page asked for (http, https, ws, wss; not data:/chrome:)."""
    urls = []
    for entry in driver.get_log('performance'):
        msg = json.loads(entry['message'])['message']
        if msg['method'] in ('Network.requestWillBeSent', 'Network.webSocketCreated'):
            params = msg['params']
            url = params['request']['url'] if 'request' in params else params['url']
            if url.startswith(('http:', 'https:', 'ws:', 'wss:')):
                urls.append(url)
    return urls


# ----------------------------------------------------------------------------- tests
def test_page_is_local_and_offline(browser, server):
    assert browser.title.startswith('mmrefseg')
    body = browser.find_element('css selector', 'body').text
    assert 'mpg_lqgnet_tiny_refer.py' in body and '2 LQPG layers' in body
    assert 'Photos (tests/data/tiny_refer)' in body and 'RefShapes val scenes' in body
    urls = requested_urls(browser)
    assert any(u.endswith('.js') for u in urls), f'the log recorded no script: {urls}'
    local = (f'http://127.0.0.1:{server["port"]}/', f'ws://127.0.0.1:{server["port"]}/')
    outside = [u for u in urls if not u.startswith(local)]
    assert not outside, f'the page asked for non-local resources: {outside[:10]}'


def test_two_sentences_give_the_masks_of_inference_model(browser, server, reference_model,
                                                        tmp_path):
    from mmrefseg.apis import inference_model
    set_image(browser, IMAGE)
    set_sentences(browser, '\n'.join(SENTENCES))
    status = run_and_wait(browser, server)
    assert 'the model took' in status and '2 sentences on a 640×480 image' in status, status
    reference = inference_model(reference_model, IMAGE, SENTENCES)
    n_layers = reference_model.cfg.model.decode_head.num_layers
    for i, (sentence, ref) in enumerate(zip(SENTENCES, reference)):
        assert shown(browser, f'result-{i}')
        assert sentence in browser.find_element('css selector', f'#title-{i}').text
        src = browser.find_element('css selector', f'#mask-{i} img').get_attribute('src')
        png = fetch_png(src)
        want = ref.pred_sem_seg.data[0].numpy().astype(np.uint8) * 255
        assert png.shape == want.shape and np.array_equal(png, want), (
            f'sentence {i}: the page\'s mask differs from inference_model in '
            f'{int((png != want).sum())} pixels')
        overlay = fetch_png(browser.find_element('css selector', f'#overlay-{i} img')
                            .get_attribute('src'))
        assert overlay.shape == (480, 640, 3)
        priors = browser.find_elements('css selector', f'#priors-{i} img')
        assert len(priors) == n_layers
        assert all(fetch_png(p.get_attribute('src')).shape == (480, 640, 3) for p in priors)
    assert not shown(browser, 'result-2')
    shot = full_page_screenshot(browser, str(tmp_path / 'webui.png'))
    img = cv2.imread(shot)
    assert img is not None and img.shape[1] >= 1000 and img.shape[0] >= 1000
    assert img.std() > 10  # not a blank page
    out = os.environ.get('MMREFSEG_WEBUI_SCREENSHOT')
    if out:  # keep a copy to look at
        shutil.copy(shot, out)


def test_an_example_fills_the_inputs(browser, server, reference_model, tmp_path):
    """Clicking a RefShapes example puts its scene and its sentences in the inputs."""
    from mmrefseg.apis import inference_model
    row = browser.find_elements('css selector', '#examples-1 tbody tr')[0]
    shown_text = row.text.strip()
    assert shown_text, 'the example row shows no sentence'
    row.click()
    box = browser.find_element('css selector', '#sentences textarea')
    wait_for(browser, lambda d: box.get_attribute('value').replace('\n', ' ') == shown_text,
             what='the example sentences')
    sentences = box.get_attribute('value').split('\n')
    wait_for(browser, lambda d: d.find_elements('css selector', '#image img'),
             what='the example image')
    scene = tmp_path / 'scene.png'  # the picture the page holds now
    with urllib.request.urlopen(browser.find_element('css selector', '#image img')
                                .get_attribute('src'), timeout=30) as r:
        scene.write_bytes(r.read())
    status = run_and_wait(browser, server)
    n = len(sentences)
    assert f'{n} sentence{"s" if n > 1 else ""} on a 128×128 image' in status, status
    for i, ref in enumerate(inference_model(reference_model, str(scene), sentences)):
        png = fetch_png(browser.find_element('css selector', f'#mask-{i} img')
                        .get_attribute('src'))
        assert np.array_equal(png, ref.pred_sem_seg.data[0].numpy().astype(np.uint8) * 255)


def test_bad_input_gets_a_message_and_the_server_keeps_serving(browser, server, tmp_path):
    set_image(browser, IMAGE)
    set_sentences(browser, ' ')
    status = run_and_wait(browser, server)
    assert 'Cannot run: Type at least one sentence' in status, status

    set_sentences(browser, 'a\nb\nc\nd')
    status = run_and_wait(browser, server)
    assert 'Cannot run: 4 sentences: at most 3 per run' in status, status

    # a text file: the browser refuses it (Gradio's own message); running asks for an image
    notes = tmp_path / 'notes.txt'
    notes.write_text('these are my notes, not a picture\n')
    set_image(browser, str(notes), expect_upload=False)
    wait_for(browser, lambda d: 'Invalid file type' in d.find_element('css selector',
                                                                      'body').text,
             what='the invalid-file-type message')
    set_sentences(browser, 'the cat')
    status = run_and_wait(browser, server)
    assert 'Cannot run: Pick an image first' in status, status

    # the same text named .png passes the browser's check; the server says what it is
    fake = tmp_path / 'holiday.png'
    fake.write_text('these are my notes, not a picture\n')
    set_image(browser, str(fake))
    status = run_and_wait(browser, server)
    assert 'Cannot run: "holiday.png" is not an image this page can read' in status, status

    big = tmp_path / 'large.png'
    cv2.imwrite(str(big), cv2.resize(cv2.imread(IMAGE), (800, 600)))
    set_image(browser, str(big))
    status = run_and_wait(browser, server)
    assert ('Cannot run: "large.png" is 800×600 = 0.5 MP; this page takes at most 0.4 MP'
            in status), status
    assert not any(shown(browser, f'result-{i}') for i in range(3))
    page = browser.find_element('css selector', 'body').text
    assert 'Traceback' not in page and 'Exception' not in page

    # still serving
    set_image(browser, IMAGE)
    status = run_and_wait(browser, server)
    assert 'the model took' in status and '1 sentence on a 640×480 image' in status, status
    assert shown(browser, 'result-0') and not shown(browser, 'result-1')
    assert 'Traceback' not in server['log'].read_text()


def test_requests_run_one_at_a_time(server):
    """Three requests sent at once (Gradio's own client) run one after another."""
    from gradio_client import Client, handle_file
    first = last_request(server) + 1
    client = Client(server['url'], verbose=False)
    jobs = [client.submit(handle_file(IMAGE), '\n'.join(SENTENCES), api_name='/segment')
            for _ in range(3)]
    for job in jobs:
        assert '(request ' in job.result(timeout=TIMEOUT)[0]
    events = re.findall(r'webui: request (\d+) (start|done)', server['log'].read_text())
    events = [(int(n), e) for n, e in events if int(n) >= first]
    assert len(events) == 6, events
    for k in range(0, 6, 2):  # start n, done n, start n+1, done n+1, ...
        assert events[k][1] == 'start' and events[k + 1] == (events[k][0], 'done'), events


def test_only_uploaded_files_are_read(server):
    """A client that names a file on the server (not an upload) gets a refusal."""
    from gradio_client import Client
    client = Client(server['url'], verbose=False)
    status = client.predict({'path': IMAGE, 'orig_name': 'cats.jpg'}, 'the cat',
                            api_name='/segment')[0]
    assert status.startswith('**Cannot run:** "cats.jpg" was not uploaded through this '
                             'page'), status  # (the status line's Markdown source)


def test_the_server_never_reached_for_the_network(server):
    """(last) Every outbound connection of the server went to the sentinel proxy: none."""
    assert server['proxy'].connections == 0, 'the server tried to reach the network'
