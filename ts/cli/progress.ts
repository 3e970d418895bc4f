/**
 * Progress on stderr: cli-progress bars with an ETA when stderr is a terminal; otherwise a plain
 * line now and then (every 10 s at most per task), so logs stay short. stdout is never touched.
 */
import { MultiBar, type SingleBar } from 'cli-progress'

const PLAIN_EVERY_MS = 10_000

export interface ImageProgress {
  done: number
  total: number
  imagesPerSecond?: number
  etaSeconds?: number
}

export interface StepProgress {
  epoch: number
  epochs: number
  step: number
  stepsPerEpoch: number
  loss: number
}

/** One task: a bar on a terminal, occasional lines elsewhere. */
export class Task {
  private bar?: SingleBar
  private t0 = 0
  private v0 = 0
  private lastPlain = 0
  private started = false

  constructor(
    private readonly progress: Progress,
    readonly label: string,
    private readonly unit: string,
  ) {}

  /** Set the position (`value` of `total`), with the text shown beside the bar. `rate` and `eta`
   *  override the ones measured here (per second of `unit`). */
  update(value: number, total: number, info: string, given: { rate?: number; eta?: number } = {}): void {
    const now = Date.now()
    if (!this.started) {
      this.started = true
      this.t0 = now
      this.v0 = Math.max(0, value - 1)
      this.lastPlain = now
    }
    const elapsed = (now - this.t0) / 1000
    const rate = given.rate ?? (elapsed > 0 ? (value - this.v0) / elapsed : Number.NaN)
    const eta = given.eta ?? (rate > 0 ? (total - value) / rate : Number.NaN)
    const rateText = Number.isFinite(rate) && rate > 0 ? `${rate.toFixed(rate < 10 ? 1 : 0)} ${this.unit}/s` : ''
    const payload = {
      label: this.label.padEnd(8),
      info: rateText ? `${info} | ${rateText}` : info,
      remaining: value >= total ? '0s' : formatSeconds(eta),
    }
    if (this.progress.tty) {
      if (!this.bar) this.bar = this.progress.create(total, value, payload)
      else this.bar.setTotal(total)
      this.bar.update(value, payload)
    } else if (this.progress.plain && now - this.lastPlain >= PLAIN_EVERY_MS) {
      this.lastPlain = now
      this.progress.log(`${this.label}: ${value}/${total} ${payload.info}, ETA ${payload.remaining}`)
    }
  }

  /** Take the bar off the screen (the next task draws in its place). */
  remove(): void {
    if (this.bar) this.progress.remove(this.bar)
    this.bar = undefined
  }
}

export class Progress {
  private bars?: MultiBar
  /** Bars are drawn when stderr is a terminal; `plain` lines are printed otherwise. */
  readonly tty: boolean
  readonly plain: boolean

  constructor(enabled: boolean) {
    this.tty = enabled && process.stderr.isTTY === true
    this.plain = enabled && !this.tty
  }

  /** A bar (on a terminal only), in the container of bars on screen, created on first use. */
  create(total: number, value: number, payload: object): SingleBar {
    this.bars ??= new MultiBar({
      stream: process.stderr,
      format: '{label} |{bar}| {percentage}% | ETA {remaining} | {info}',
      barsize: 20,
      hideCursor: true,
      clearOnComplete: false,
      autopadding: true,
      fps: 10,
      etaBuffer: 20,
      barCompleteChar: '\u2588',
      barIncompleteChar: '\u2591',
    })
    return this.bars.create(total, value, payload)
  }

  remove(bar: SingleBar): void {
    this.bars?.remove(bar)
  }

  /** Training steps: epoch, step and loss beside the bar. */
  train(label = 'train'): (p: StepProgress) => void {
    const task = new Task(this, label, 'steps')
    return (p) => {
      const total = p.epochs * p.stepsPerEpoch
      const value = (p.epoch - 1) * p.stepsPerEpoch + p.step
      task.update(
        value,
        total,
        `epoch ${p.epoch}/${p.epochs} step ${p.step}/${p.stepsPerEpoch} | loss ${p.loss.toFixed(4)}`,
      )
    }
  }

  /** Images done, images per second and ETA. */
  images(label: string): (p: ImageProgress) => void {
    const task = new Task(this, label, 'images')
    return (p) =>
      task.update(p.done, p.total, `${p.done}/${p.total} images`, { rate: p.imagesPerSecond, eta: p.etaSeconds })
  }

  task(label: string, unit: string): Task {
    return new Task(this, label, unit)
  }

  /** With --json: notes and warnings are JSON lines on stderr ({"note": ...}, {"warning": ...}). */
  json = false

  /** A note on stderr, printed above the bars while they are drawn. */
  log(line: string): void {
    this.write(this.json ? JSON.stringify({ note: line }) : line)
  }

  /** A warning on stderr: something was left out or may be wrong, and the work went on. */
  warn(line: string): void {
    this.write(this.json ? JSON.stringify({ warning: line }) : `warning: ${line}`)
  }

  private write(line: string): void {
    if (this.bars) {
      this.bars.log(`${line}\n`)
      this.bars.update()
    } else process.stderr.write(`${line}\n`)
  }

  /** Draw the bars' final state and give the terminal back (before results go to stdout). */
  stop(): void {
    this.bars?.stop()
    this.bars = undefined
  }
}

/** Seconds as a progress bar shows them: 42s, 3m05s, 1h02m. */
export function formatSeconds(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '--'
  const t = Math.round(s)
  if (t < 60) return `${t}s`
  const m = Math.floor(t / 60)
  if (m < 60) return `${m}m${String(t % 60).padStart(2, '0')}s`
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`
}
